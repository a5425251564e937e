//! The three services a bootstrap node offers agents, each switchable in
//! `[roles]`: [`reflector`], [`coordinator`] and [`relay`].

pub mod coordinator;
pub mod reflector;
pub mod relay;
