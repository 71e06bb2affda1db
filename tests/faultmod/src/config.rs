//! The control file: what to inject. Pure parsing, no PKCS#11 (see README.md for the syntax).

use std::path::PathBuf;
use std::time::Duration;

use cryptoki_sys::{CK_FLAGS, CK_MECHANISM_TYPE, CK_RV, CK_SLOT_ID};

use crate::funcs::Func;
use crate::rv;

/// Which functions a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `*`: every function except `C_Initialize`, `C_Finalize` and `C_GetFunctionList`.
    All,
    One(Func),
}

impl Target {
    pub fn matches(self, func: Func) -> bool {
        match self {
            Target::One(f) => f == func,
            Target::All => !matches!(
                func,
                Func::C_Initialize | Func::C_Finalize | Func::C_GetFunctionList
            ),
        }
    }
}

/// When a `fail` rule fires, counting the calls to its functions since the rule was armed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Trigger {
    /// The n-th call only.
    Nth(u64),
    /// Calls n, 2n, 3n, ...
    Every(u64),
    /// Calls 1..=n.
    Count(u64),
    /// Each call with probability p, from a PRNG seeded with `seed`.
    Prob { p: f64, seed: u64 },
    /// Every call.
    Always,
}

/// Whether the real module runs the call before the injected code is returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Before,
    After,
}

/// What else happens in the real module when a rule fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    None,
    /// `C_CloseSession` of the call's session.
    CloseSession,
    /// `C_Logout` through the call's session.
    Logout,
    /// `C_CloseAllSessions` of the call's slot (which also ends the login).
    CloseAll,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// The rule's identity: its normalized line and occurrence. A rule whose line is unchanged
    /// when the file is re-read keeps its call counter (and PRNG state).
    pub key: String,
    pub target: Target,
    pub rv: CK_RV,
    pub trigger: Trigger,
    /// None: the function's default (see `Func::fails_after_forwarding`).
    pub mode: Option<Mode>,
    pub effect: Effect,
}

/// Which tokens `remove_token` takes away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// Every slot that has a token.
    All,
    Slot(CK_SLOT_ID),
    Label(String),
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    pub rules: Vec<Rule>,
    pub latency: Vec<(Target, Duration)>,
    pub flags_set: CK_FLAGS,
    pub flags_clear: CK_FLAGS,
    pub removals: Vec<Removal>,
    pub pin_retries: Option<u32>,
    pub dump: bool,
    /// `trace PATH`: append one line per call to PATH.
    pub trace: Option<PathBuf>,
    /// `init_args TEXT`: C_Initialize must carry exactly TEXT as pReserved (else
    /// CKR_ARGUMENTS_BAD, as NSS softokn); the real module gets NULL there.
    pub init_args: Option<String>,
    /// `max_sessions N [report]`: C_OpenSession answers CKR_SESSION_COUNT while N sessions
    /// of the slot are open through the module; `report` states N as ulMaxSessionCount
    /// (else CK_UNAVAILABLE_INFORMATION, as YubiHSM 2's number says nothing useful).
    pub max_sessions: Option<(u64, bool)>,
    /// `no_login PIN`: a token that requires no login (kmsp11): CKF_LOGIN_REQUIRED cleared,
    /// and every new session is logged in to the real module with PIN by the module itself.
    pub no_login: Option<String>,
    /// `hide_mechanism CKM_X ...`: left out of C_GetMechanismList; C_GetMechanismInfo and
    /// the *Init calls with it answer CKR_MECHANISM_INVALID.
    pub hidden_mechanisms: Vec<CK_MECHANISM_TYPE>,
    /// `utc_time TEXT`: C_GetTokenInfo's utcTime (16 bytes, blank-padded), e.g. the
    /// non-digits opencryptoki writes there beside CKF_CLOCK_ON_TOKEN.
    pub utc_time: Option<[u8; 16]>,
    /// `unreachable [code=CKR_...] [delay=DURATION]`: every call (but C_Initialize,
    /// C_Finalize, C_GetFunctionList and C_GetInfo) returns the code (default CKR_DEVICE_ERROR) after the
    /// delay, without reaching the real module.
    pub unreachable: Option<(CK_RV, Duration)>,
    /// One message per line that could not be used (the line is ignored).
    pub errors: Vec<String>,
}

fn parse_target(text: &str) -> Result<Target, String> {
    if text == "*" {
        return Ok(Target::All);
    }
    Func::from_name(text)
        .map(Target::One)
        .ok_or_else(|| format!("unknown PKCS#11 function {text:?}"))
}

fn parse_u64(key: &str, value: &str) -> Result<u64, String> {
    rv::parse_number(value).ok_or_else(|| format!("{key}={value:?} is not a number"))
}

/// `2ms`, `150us`, `1.5s`, `500ns`; a bare number is milliseconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration"))?;
    let scale = match unit {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "" | "ms" => 1e-3,
        "s" => 1.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (ns, us, ms, s)")),
    };
    let seconds = value * scale;
    if !seconds.is_finite() || !(0.0..=3600.0).contains(&seconds) {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// `HSMKEY_FAULT_LATENCY`: a round trip for every call a network client would send (`1ms`,
/// the same as `*=1ms`), or per function: `C_Sign=2ms,C_SignInit=1ms,*=500us` (commas or
/// spaces between entries; the longest matching entry applies, as with `latency` lines).
pub fn parse_latency_env(text: &str) -> Result<Vec<(Target, Duration)>, String> {
    let mut out = Vec::new();
    for item in text
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
    {
        let (target, duration) = match item.split_once('=') {
            Some((f, d)) => (parse_target(f.trim())?, d.trim()),
            None => (Target::All, item),
        };
        out.push((target, parse_duration(duration)?));
    }
    Ok(out)
}

fn parse_fail(words: &[&str], key: String) -> Result<Rule, String> {
    let [function, code, options @ ..] = words else {
        return Err("fail needs a function and a return code".into());
    };
    let target = parse_target(function)?;
    let rv = rv::parse_rv(code).ok_or_else(|| format!("unknown return code {code:?}"))?;
    let mut trigger = None;
    let mut seed = 0u64;
    let mut prob = None;
    let mut mode = None;
    let mut effect = Effect::None;
    let mut set_trigger = |t: Trigger| {
        if trigger.replace(t).is_some() {
            Err("more than one of nth=/every=/count=/prob=/always".to_string())
        } else {
            Ok(())
        }
    };
    for option in options {
        let (k, v) = option.split_once('=').unwrap_or((option, ""));
        match k {
            "nth" | "every" | "count" => {
                let n = parse_u64(k, v)?;
                if n == 0 {
                    return Err(format!("{k}= must be at least 1"));
                }
                set_trigger(match k {
                    "nth" => Trigger::Nth(n),
                    "every" => Trigger::Every(n),
                    _ => Trigger::Count(n),
                })?;
            }
            "always" if v.is_empty() => set_trigger(Trigger::Always)?,
            "prob" => {
                let p: f64 = v
                    .parse()
                    .map_err(|_| format!("prob={v:?} is not a number"))?;
                if !(0.0..=1.0).contains(&p) {
                    return Err(format!("prob={v} is not within 0..1"));
                }
                prob = Some(p);
                set_trigger(Trigger::Always)?; // placeholder, replaced below
            }
            "seed" => seed = parse_u64(k, v)?,
            "mode" => {
                mode = Some(match v {
                    "before" => Mode::Before,
                    "after" => Mode::After,
                    _ => return Err(format!("mode={v:?}: use before or after")),
                })
            }
            "effect" => {
                effect = match v {
                    "none" => Effect::None,
                    "close_session" => Effect::CloseSession,
                    "logout" => Effect::Logout,
                    "close_all" => Effect::CloseAll,
                    _ => {
                        return Err(format!(
                            "effect={v:?}: use close_session, logout, close_all or none"
                        ))
                    }
                }
            }
            "id" => {} // only part of the rule's identity
            _ => return Err(format!("unknown option {option:?}")),
        }
    }
    let trigger = match (prob, trigger) {
        (Some(p), _) => Trigger::Prob { p, seed },
        (None, Some(t)) => t,
        (None, None) => return Err("say when: nth=N, every=N, count=N, prob=P or always".into()),
    };
    Ok(Rule {
        key,
        target,
        rv,
        trigger,
        mode,
        effect,
    })
}

/// Parses the whole control file. Bad lines are reported in `errors` and ignored.
pub fn parse(text: &str) -> Config {
    let mut cfg = Config::default();
    let mut seen: Vec<String> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("");
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some((&verb, args)) = words.split_first() else {
            continue;
        };
        let result: Result<(), String> = (|| {
            match verb {
                "fail" => {
                    let normalized = words.join(" ");
                    let occurrence = seen.iter().filter(|s| **s == normalized).count();
                    seen.push(normalized.clone());
                    cfg.rules
                        .push(parse_fail(args, format!("{normalized}#{occurrence}"))?);
                }
                "latency" => {
                    let [function, duration] = args else {
                        return Err("latency needs a function and a duration".into());
                    };
                    cfg.latency
                        .push((parse_target(function)?, parse_duration(duration)?));
                }
                "token_flags" => {
                    if args.is_empty() {
                        return Err("token_flags needs at least one flag".into());
                    }
                    for arg in args {
                        let (clear, name) = match arg.strip_prefix('-') {
                            Some(name) => (true, name),
                            None => (false, arg.strip_prefix('+').unwrap_or(arg)),
                        };
                        let flag = rv::parse_token_flag(name)
                            .ok_or_else(|| format!("unknown token flag {name:?}"))?;
                        if clear {
                            cfg.flags_set &= !flag;
                            cfg.flags_clear |= flag;
                        } else {
                            cfg.flags_clear &= !flag;
                            cfg.flags_set |= flag;
                        }
                    }
                }
                "remove_token" => {
                    let removal = match args {
                        [] => Removal::All,
                        [arg] => match arg.split_once('=') {
                            Some(("slot", v)) => Removal::Slot(
                                CK_SLOT_ID::try_from(parse_u64("slot", v)?)
                                    .map_err(|_| format!("slot={v} is out of range"))?,
                            ),
                            Some(("label", v)) if !v.is_empty() => Removal::Label(v.to_string()),
                            _ => return Err(format!("remove_token: unknown option {arg:?}")),
                        },
                        _ => return Err("remove_token takes at most one option".into()),
                    };
                    cfg.removals.push(removal);
                }
                "restore_token" if args.is_empty() => cfg.removals.clear(),
                "pin_retries" => {
                    let [n] = args else {
                        return Err("pin_retries needs a number".into());
                    };
                    let n = parse_u64("pin_retries", n)?;
                    cfg.pin_retries = Some(
                        u32::try_from(n)
                            .ok()
                            .filter(|n| *n > 0)
                            .ok_or("pin_retries must be 1 or more")?,
                    );
                }
                "dump" if args.is_empty() => cfg.dump = true,
                "init_args" => {
                    let text = line
                        .trim_start()
                        .strip_prefix("init_args")
                        .unwrap_or("")
                        .trim();
                    if text.is_empty() {
                        return Err("init_args needs the text C_Initialize must carry".into());
                    }
                    cfg.init_args = Some(text.to_string());
                }
                "utc_time" => {
                    let text = line
                        .trim_start()
                        .strip_prefix("utc_time")
                        .unwrap_or("")
                        .trim();
                    if text.is_empty() || text.len() > 16 {
                        return Err("utc_time needs 1 to 16 characters".into());
                    }
                    let mut field = [b' '; 16];
                    field[..text.len()].copy_from_slice(text.as_bytes());
                    cfg.utc_time = Some(field);
                }
                "max_sessions" => {
                    let (n, report) = match args {
                        [n] => (n, false),
                        [n, "report"] => (n, true),
                        _ => return Err("max_sessions N [report]".into()),
                    };
                    let n = parse_u64("max_sessions", n)?;
                    if n == 0 {
                        return Err("max_sessions must be 1 or more".into());
                    }
                    cfg.max_sessions = Some((n, report));
                }
                "no_login" => {
                    let [pin] = args else {
                        return Err("no_login needs the PIN the module logs in with".into());
                    };
                    cfg.no_login = Some((*pin).to_string());
                }
                "hide_mechanism" => {
                    if args.is_empty() {
                        return Err("hide_mechanism needs at least one mechanism".into());
                    }
                    for arg in args {
                        cfg.hidden_mechanisms.push(
                            rv::parse_mechanism(arg)
                                .ok_or_else(|| format!("unknown mechanism {arg:?}"))?,
                        );
                    }
                }
                "trace" => {
                    let [path] = args else {
                        return Err("trace needs one path (without spaces)".into());
                    };
                    cfg.trace = Some(PathBuf::from(path));
                }
                "unreachable" => {
                    let mut code = cryptoki_sys::CKR_DEVICE_ERROR;
                    let mut delay = Duration::ZERO;
                    for arg in args {
                        match arg.split_once('=') {
                            Some(("code", v)) => {
                                code = rv::parse_rv(v)
                                    .ok_or_else(|| format!("unknown return code {v:?}"))?;
                            }
                            Some(("delay", v)) => delay = parse_duration(v)?,
                            _ => return Err(format!("unreachable: unknown option {arg:?}")),
                        }
                    }
                    cfg.unreachable = Some((code, delay));
                }
                _ => return Err(format!("unknown directive {verb:?}")),
            }
            Ok(())
        })();
        if let Err(e) = result {
            cfg.errors.push(format!(
                "control file line {}: {e}: {}",
                index + 1,
                raw.trim()
            ));
        }
    }
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptoki_sys::*;

    #[test]
    fn fail_rules() {
        let cfg = parse(
            "# comment\n\
             fail C_Sign CKR_DEVICE_ERROR nth=3\n\
             fail C_Sign CKR_SESSION_HANDLE_INVALID every=5 effect=close_session\n\
             fail C_SignInit CKR_DEVICE_REMOVED prob=0.1 seed=42\n\
             fail C_Login CKR_PIN_INCORRECT always   # trailing comment\n\
             fail C_Sign DEVICE_ERROR count=2 mode=before id=7\n\
             fail * 0x30 nth=1\n",
        );
        assert!(cfg.errors.is_empty(), "{:?}", cfg.errors);
        let r = &cfg.rules;
        assert_eq!(r.len(), 6);
        assert_eq!(r[0].target, Target::One(Func::C_Sign));
        assert_eq!(r[0].rv, CKR_DEVICE_ERROR);
        assert_eq!(r[0].trigger, Trigger::Nth(3));
        assert_eq!(r[0].key, "fail C_Sign CKR_DEVICE_ERROR nth=3#0");
        assert_eq!(r[1].trigger, Trigger::Every(5));
        assert_eq!(r[1].effect, Effect::CloseSession);
        assert_eq!(r[2].trigger, Trigger::Prob { p: 0.1, seed: 42 });
        assert_eq!(r[3].trigger, Trigger::Always);
        assert_eq!(r[3].rv, CKR_PIN_INCORRECT);
        assert_eq!(r[4].trigger, Trigger::Count(2));
        assert_eq!(r[4].mode, Some(Mode::Before));
        assert_eq!(r[5].target, Target::All);
        assert!(Target::All.matches(Func::C_Sign));
        assert!(!Target::All.matches(Func::C_Initialize));
    }

    #[test]
    fn identical_lines_are_distinct_rules() {
        let cfg =
            parse("fail C_Sign CKR_DEVICE_ERROR nth=1\nfail  C_Sign CKR_DEVICE_ERROR nth=1\n");
        assert_eq!(cfg.rules[0].key, "fail C_Sign CKR_DEVICE_ERROR nth=1#0");
        assert_eq!(cfg.rules[1].key, "fail C_Sign CKR_DEVICE_ERROR nth=1#1");
    }

    #[test]
    fn other_directives() {
        let cfg = parse(
            "latency C_Sign 2ms\nlatency * 150us\n\
             token_flags +CKF_USER_PIN_FINAL_TRY USER_PIN_COUNT_LOW\n\
             token_flags -CKF_USER_PIN_COUNT_LOW\n\
             remove_token label=hsmkey-test\nremove_token slot=0x10\n\
             pin_retries 3\ndump\ntrace /tmp/calls.log\n",
        );
        assert!(cfg.errors.is_empty(), "{:?}", cfg.errors);
        assert_eq!(
            cfg.latency,
            vec![
                (Target::One(Func::C_Sign), Duration::from_millis(2)),
                (Target::All, Duration::from_micros(150))
            ]
        );
        assert_eq!(cfg.flags_set, CKF_USER_PIN_FINAL_TRY);
        assert_eq!(cfg.flags_clear, CKF_USER_PIN_COUNT_LOW);
        assert_eq!(
            cfg.removals,
            vec![Removal::Label("hsmkey-test".into()), Removal::Slot(16)]
        );
        assert_eq!(cfg.pin_retries, Some(3));
        assert!(cfg.dump);
        assert_eq!(cfg.trace, Some(PathBuf::from("/tmp/calls.log")));
        let restored = parse("remove_token\nrestore_token\n");
        assert!(restored.removals.is_empty());
        assert_eq!(parse("remove_token\n").removals, vec![Removal::All]);
    }

    #[test]
    fn bad_lines_are_reported_and_ignored() {
        let cfg = parse(
            "fail C_Bogus CKR_DEVICE_ERROR nth=1\n\
             fail C_Sign CKR_BOGUS nth=1\n\
             fail C_Sign CKR_DEVICE_ERROR\n\
             fail C_Sign CKR_DEVICE_ERROR nth=0\n\
             fail C_Sign CKR_DEVICE_ERROR nth=1 every=2\n\
             fail C_Sign CKR_DEVICE_ERROR prob=2\n\
             fail C_Sign CKR_DEVICE_ERROR nth=1 effect=explode\n\
             latency C_Sign fast\n\
             token_flags +CKF_NOPE\n\
             explode\n\
             fail C_Sign CKR_DEVICE_ERROR nth=2\n",
        );
        assert_eq!(cfg.errors.len(), 10, "{:?}", cfg.errors);
        assert!(cfg.errors[0].contains("line 1"));
        assert!(cfg.errors[0].contains("C_Bogus"));
        assert_eq!(cfg.rules.len(), 1);
        assert_eq!(cfg.rules[0].trigger, Trigger::Nth(2));
    }

    #[test]
    fn token_models() {
        let cfg = parse(
            "init_args configdir='sql:/tmp/x' flags=readOnly\nmax_sessions 3 report\n\
             no_login 1234\nhide_mechanism CKM_SHA256_RSA_PKCS 0x41\n",
        );
        assert!(cfg.errors.is_empty(), "{:?}", cfg.errors);
        assert_eq!(
            cfg.init_args.as_deref(),
            Some("configdir='sql:/tmp/x' flags=readOnly")
        );
        assert_eq!(cfg.max_sessions, Some((3, true)));
        assert_eq!(cfg.no_login.as_deref(), Some("1234"));
        assert_eq!(cfg.hidden_mechanisms, vec![0x40, 0x41]);
        assert_eq!(
            parse("utc_time ??\n").utc_time.map(|t| t[..3].to_vec()),
            Some(b"?? ".to_vec())
        );
        assert_eq!(parse("max_sessions 2\n").max_sessions, Some((2, false)));
        assert_eq!(
            parse("max_sessions 0\nhide_mechanism CKM_NOPE\n")
                .errors
                .len(),
            2
        );
    }

    #[test]
    fn latency_from_the_environment() {
        assert_eq!(
            parse_latency_env("1ms"),
            Ok(vec![(Target::All, Duration::from_millis(1))])
        );
        assert_eq!(
            parse_latency_env(" C_Sign=2ms, C_SignInit=500us *=0.1ms "),
            Ok(vec![
                (Target::One(Func::C_Sign), Duration::from_millis(2)),
                (Target::One(Func::C_SignInit), Duration::from_micros(500)),
                (Target::All, Duration::from_micros(100)),
            ])
        );
        assert_eq!(parse_latency_env(""), Ok(vec![]));
        assert!(parse_latency_env("C_Bogus=1ms").is_err());
        assert!(parse_latency_env("C_Sign=slow").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2ms"), Ok(Duration::from_millis(2)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_millis(3)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ns"), Ok(Duration::from_nanos(250)));
        assert!(parse_duration("2h").is_err());
        assert!(parse_duration("-1ms").is_err());
    }

    #[test]
    fn unreachable() {
        assert_eq!(parse("").unreachable, None);
        assert_eq!(
            parse("unreachable").unreachable,
            Some((CKR_DEVICE_ERROR, Duration::ZERO))
        );
        assert_eq!(
            parse("unreachable code=CKR_DEVICE_REMOVED delay=20ms").unreachable,
            Some((CKR_DEVICE_REMOVED, Duration::from_millis(20)))
        );
        let bad = parse("unreachable code=CKR_NOPE\nunreachable when=now");
        assert_eq!(bad.unreachable, None);
        assert_eq!(bad.errors.len(), 2);
    }
}
