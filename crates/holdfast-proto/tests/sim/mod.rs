//! A deterministic simulation of one initiator and one target over a
//! network that cuts, blackholes and holds connections, with target restarts
//! and shutdown notices, checked after every step (see `checker`).

pub mod checker;
pub mod net;
pub mod service;
pub mod world;

pub use world::{SimParams, SimReport, World};
