//! The reflector role: tell every connecting peer the address it was seen
//! from. Behind a NAT this is the peer's public mapping, the first thing an
//! agent needs before anyone can reach it. (The node reports it in
//! `Welcome` and `Pong`: see `Shared::reflect`; over the TCP relay it is the
//! TCP peer's address.)
