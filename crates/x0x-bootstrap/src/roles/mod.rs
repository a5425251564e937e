//! The three services a bootstrap node offers agents, each switchable in
//! `[roles]`: [`reflector`], [`coordinator`] and [`relay`]; the
//! coordinator also keeps the [`topics`] directory.

pub mod coordinator;
pub mod reflector;
pub mod relay;
pub mod topics;
