//! hsmkey's core: plain Rust over cryptoki, with no Python in it (nothing under `src/core/`
//! uses pyo3; `cargo test --no-default-features` builds and tests it without an interpreter).
//!
//! From the bottom up: `error`, `log` and `secret` (the PIN) are leaves; `module` loads each
//! PKCS#11 module once per process; `token` finds a token and holds the login every pool on
//! it shares; `mechanism` maps signature schemes to mechanisms; `key` finds keys and reads
//! their public halves; `decrypt` and `keygen` are the other key operations; `pool` lends
//! logged-in sessions and heals them; `session` and `bound_key` are what the bindings hand to
//! users: a borrowed session and a key bound to a session or a pool.

pub mod bound_key;
pub mod decrypt;
pub mod error;
pub mod fork;
pub mod inventory;
pub mod key;
pub mod keygen;
pub mod log;
pub mod mechanism;
pub mod module;
pub mod pool;
pub mod secret;
pub mod session;
pub mod token;
