//! A key bound to where it gets sessions from (the block it was loaded in, or its pool), and
//! its private-key operations with the pool's recovery. Blocking: the bindings call these
//! without the GIL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;

use crate::core::error::{Error, Kind, Result};
use crate::core::key;
use crate::core::mechanism::Scheme;
use crate::core::pool::{KeyEntry, Lease, Pool};
use crate::core::session::SessionSlot;
use crate::core::token::TokenState;

/// How often a long batch checks for Ctrl-C (and hands queued log events to Python).
const INTERRUPT_EVERY: Duration = Duration::from_millis(50);

/// Where a key gets its session from.
#[derive(Clone)]
pub enum Binding {
    /// The session it was loaded from: valid while that session is open.
    Session(Arc<SessionSlot>),
    /// The pool: each operation borrows a session.
    Pool,
}

/// What a key operation needs, cheap to clone into a worker thread.
#[derive(Clone)]
pub struct KeyRef {
    pub pool: Arc<Pool>,
    pub binding: Binding,
    pub entry: Arc<KeyEntry>,
}

impl KeyRef {
    /// Runs `op` on a lease: the key's own session, or one borrowed from the pool for the
    /// whole call. Blocking: call it without the GIL.
    pub fn with_lease<T>(
        &self,
        interrupt: &dyn Fn() -> Result<()>,
        op: impl FnOnce(&mut Lease) -> Result<T>,
    ) -> Result<T> {
        match &self.binding {
            Binding::Session(slot) => slot.with_lease_waiting(interrupt, op),
            Binding::Pool => {
                let mut lease = self.pool.acquire(false, interrupt)?;
                let r = op(&mut lease);
                self.pool.release(lease);
                r
            }
        }
    }

    /// Signs each input, with recovery; one lease for the whole batch.
    pub fn sign_blocking(
        &self,
        scheme: Scheme,
        inputs: &[&[u8]],
        interrupt: &dyn Fn() -> Result<()>,
    ) -> Result<Vec<Vec<u8>>> {
        let (pool, entry) = (&self.pool, &self.entry);
        let batch = inputs.len() > 1;
        self.with_lease(interrupt, |lease| {
            let mut out = Vec::with_capacity(inputs.len());
            // A batch lets Ctrl-C through between items, about every INTERRUPT_EVERY (one
            // signature alone is not slowed by even a clock read).
            let mut next_check = batch.then(|| Instant::now() + INTERRUPT_EVERY);
            for data in inputs {
                if let Some(at) = next_check {
                    let now = Instant::now();
                    if now >= at {
                        interrupt()?;
                        next_check = Some(now + INTERRUPT_EVERY);
                    }
                }
                out.push(pool.run(lease, |session, token, refind| {
                    let (handle, unproven) =
                        pool.key_handle_for_signature(session, token, entry, refind)?;
                    let sig = key::sign(
                        session,
                        handle,
                        &scheme,
                        &entry.info,
                        token,
                        token.module.raw.as_ref(),
                        data,
                    )?;
                    if let Some(epoch) = unproven {
                        // The key was found again: this signature proves it is the same key
                        // (or it is not returned).
                        let ok = key::verify::verify(&entry.info, &scheme, data, &sig)?;
                        pool.confirm_key(token, entry, handle, epoch, ok)?;
                    } else if pool.cfg.verify_signatures {
                        check_signature(entry, &scheme, data, &sig, token)?;
                    }
                    Ok(sig)
                })?);
            }
            Ok(out)
        })
    }

    /// One private-key operation with the key's handle, with recovery.
    pub fn with_handle_blocking<T>(
        &self,
        interrupt: &dyn Fn() -> Result<()>,
        op: impl Fn(&Session, &TokenState, ObjectHandle) -> Result<T>,
    ) -> Result<T> {
        let (pool, entry) = (&self.pool, &self.entry);
        self.with_lease(interrupt, |lease| {
            pool.run(lease, |session, token, refind| {
                let handle = pool.key_handle(session, token, entry, refind)?;
                op(session, token, handle)
            })
        })
    }
}

/// `verify_signatures=True`: a signature that does not verify against the key's public key
/// is never returned (a token that reuses a handle for another key, or a faulty token).
fn check_signature(
    entry: &KeyEntry,
    scheme: &Scheme,
    data: &[u8],
    sig: &[u8],
    token: &TokenState,
) -> Result<()> {
    if key::verify::verify(&entry.info, scheme, data, sig)? {
        return Ok(());
    }
    Err(Error::new(
        Kind::KeyChanged,
        format!(
            "the signature made by the key with {} on {} does not verify against the key's \
             public key (verify_signatures=True), so it was not returned: the handle names \
             another key now, or the token is faulty",
            entry.query.describe(),
            token.describe()
        ),
    ))
}
