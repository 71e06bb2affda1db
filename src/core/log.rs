//! Session events (open, login, discard, recovery) for whoever listens: the core logs through
//! one process-wide sink that the bindings set (`crate::python::logging` forwards to
//! `logging.getLogger("hsmkey")`). With no sink set, events go nowhere. Events are rare; none
//! is logged on the signing hot path.

use std::sync::OnceLock;

/// How much an event matters (the numbers are Python's logging levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug = 10,
    Info = 20,
    Warning = 30,
}

pub const DEBUG: Level = Level::Debug;
pub const INFO: Level = Level::Info;
pub const WARNING: Level = Level::Warning;

/// Receives every event. It must not block for long and must not call back into the pool.
pub type Sink = fn(Level, &str);

static SINK: OnceLock<Sink> = OnceLock::new();

/// Sets the sink, once per process; later calls are ignored (returns whether this one won).
pub fn set_sink(sink: Sink) -> bool {
    SINK.set(sink).is_ok()
}

/// Hands `message` to the sink, if there is one.
pub fn log(level: Level, message: &str) {
    if let Some(sink) = SINK.get() {
        sink(level, message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    static SEEN: Mutex<Vec<(Level, String)>> = Mutex::new(Vec::new());

    fn record(level: Level, message: &str) {
        if let Ok(mut seen) = SEEN.lock() {
            seen.push((level, message.to_string()));
        }
    }

    #[test]
    fn events_reach_the_sink() {
        set_sink(record);
        log(WARNING, "login lost");
        let seen = SEEN.lock().map(|s| s.clone()).unwrap_or_default();
        assert!(seen.contains(&(Level::Warning, "login lost".to_string())));
        assert_eq!(Level::Info as u32, 20);
    }
}
