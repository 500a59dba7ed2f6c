//! `watch`'s policy, pure: when the readings of watched processes become a
//! capture. It sees readings, never `/proc` or the kernel, so it is tested
//! with made-up readings; `cmd/watch.rs` takes the readings and the captures.
//!
//! - [`policy`]: consecutive-check counters, limits, cool-down, clusters, disk;
//! - [`loopmeter`]: an event loop's utilization and longest turn per check,
//!   from its thread's `epoll_wait` entries and exits;
//! - [`config`]: the settings, from flags and a TOML file with the same keys.

pub mod config;
pub mod loopmeter;
pub mod policy;

pub use config::{Action, Config, Select, Settings};
pub use loopmeter::{LoopMeter, LoopWindow};
pub use policy::{human, Decision, Disk, Limits, MemOf, Policy, Reading, Thresholds, Trigger};
