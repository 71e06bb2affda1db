//! The Python bindings (`hsmkey._hsmkey`): thin PyO3 classes over the core, one file a core
//! concept (`pool`, `session`, `key`, `tokens`), plus what only Python needs: the exception
//! mapping (`errors`), the logging sink (`logging`), GIL-free sections (`gil`), asyncio
//! (`asyncio`) and argument conversion (`args`). Imports point one way: bindings -> core.

pub mod args;
pub mod asyncio;
pub mod errors;
pub mod gil;
pub mod key;
pub mod logging;
pub mod pool;
pub mod secrets;
pub mod session;
pub mod tokens;
