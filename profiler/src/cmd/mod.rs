//! The commands: the only layer that wires several stages together.

pub mod dump;
