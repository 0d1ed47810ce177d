//! A deterministic simulation of one initiator and one target over a
//! network that cuts, blackholes and holds connections, with target restarts
//! and shutdown notices, checked after every step (see `checker`); and two
//! target nodes over one backend with a host failing over between them
//! (`two_nodes`).

pub mod checker;
pub mod disk;
pub mod net;
pub mod report;
pub mod service;
pub mod two_nodes;
pub mod world;

pub use world::{SimParams, SimReport, World};
