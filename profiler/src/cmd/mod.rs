//! The commands: the only layer that wires several stages and domains
//! together. Each takes a plain options struct (main.rs maps the command
//! line onto it) and writes its result through [`crate::output::Report`].

pub mod core;
pub mod doctor;
pub mod dump;
pub mod gc;
pub mod heap;
pub mod info;
pub mod record;
pub mod snapshot;
pub mod watch;
