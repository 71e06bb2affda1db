//! Keys found once per login epoch: `from_hsm` in a short session block costs a map look-up,
//! not a `C_FindObjects`; handles are looked up again after a re-login (SoftHSM2 renumbers
//! them) or when the token says a handle went stale.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;

use super::{Lease, Pool};
use crate::core::error::{Error, Kind, Result};
use crate::core::key::{self, KeyInfo, KeyQuery};
use crate::core::keygen;
use crate::core::module::lock;
use crate::core::token::TokenState;

/// A private key found in the token, with its handle cached per login epoch.
pub struct KeyEntry {
    pub query: KeyQuery,
    pub info: KeyInfo,
    handle: Mutex<(u64, ObjectHandle)>,
}

/// The pool's entries by query.
#[derive(Default)]
pub(super) struct KeyCache(Mutex<HashMap<KeyQuery, Arc<KeyEntry>>>);

impl KeyCache {
    fn map(&self) -> MutexGuard<'_, HashMap<KeyQuery, Arc<KeyEntry>>> {
        lock(&self.0)
    }

    /// Forgets every entry (keys deleted, pool closed, forked child).
    pub(super) fn clear(&self) {
        self.map().clear();
    }
}

impl Pool {
    /// The entry for `query` if it was found in the current login epoch (no session, no
    /// PKCS#11 call), else None.
    pub fn cached_key(&self, query: &KeyQuery) -> Option<Arc<KeyEntry>> {
        let epoch = {
            let mut st = lock(&self.state);
            self.current(&mut st).ok()??.token.epoch()
        };
        let entry = self.keys.map().get(query)?.clone();
        let fresh = lock(&entry.handle).0 == epoch;
        fresh.then_some(entry)
    }

    /// The key entry for `query`: from the cache when found in this login epoch, else found
    /// (and its public half read) through `lease`.
    pub fn find_key(&self, lease: &mut Lease, query: &KeyQuery) -> Result<Arc<KeyEntry>> {
        if let Some(entry) = self.keys.map().get(query) {
            if lock(&entry.handle).0 == lease.token.epoch() {
                return Ok(entry.clone());
            }
        }
        let entry = self.run(lease, |session, token, _| {
            let epoch = token.epoch();
            let handle = key::find_private_key(session, query, &token.describe())?;
            let info = key::read_info(session, handle, None, query)?;
            Ok(Arc::new(KeyEntry {
                query: query.clone(),
                info,
                handle: Mutex::new((epoch, handle)),
            }))
        })?;
        self.keys.map().insert(query.clone(), entry.clone());
        Ok(entry)
    }
    /// Generates a key pair on a read-write lease and returns its entry (cached like a found
    /// key).
    pub fn generate_key(&self, lease: &mut Lease, spec: &keygen::KeySpec) -> Result<Arc<KeyEntry>> {
        let query = KeyQuery::new(Some(spec.label.clone()), Some(spec.id.clone()))?;
        self.store_key(lease, "generating", query, |s| keygen::generate(s, spec))
    }
    /// Imports a private key on a read-write lease and returns its entry.
    pub fn import_key(&self, lease: &mut Lease, import: &keygen::Import) -> Result<Arc<KeyEntry>> {
        let query = KeyQuery::new(Some(import.label.clone()), Some(import.id.clone()))?;
        self.store_key(lease, "importing", query, |s| keygen::import(s, import))
    }
    /// Makes a key object with `make` (on a read-write lease) and caches its entry. On the
    /// retry after a lost session, the first attempt may have made the key before its answer
    /// was lost (a network HSM): the retry looks for it before making another.
    fn store_key(
        &self,
        lease: &mut Lease,
        what: &str,
        query: KeyQuery,
        make: impl Fn(&Session) -> Result<(ObjectHandle, ObjectHandle)>,
    ) -> Result<Arc<KeyEntry>> {
        if !lease.rw {
            return Err(Error::new(
                Kind::Session,
                format!("{what} keys needs a read-write session: use pool.session(rw=True)"),
            ));
        }
        let mut tried = false;
        let entry = self.run(lease, |session, token, _| {
            let epoch = token.epoch();
            let existing = match tried {
                true => key::find_private_key(session, &query, &token.describe()).ok(),
                false => None,
            };
            tried = true;
            let (handle, public) = match existing {
                Some(h) => (h, None),
                None => {
                    let (private, public) = make(session)?;
                    (private, Some(public))
                }
            };
            let info = key::read_info(session, handle, public, &query)?;
            Ok(Arc::new(KeyEntry {
                query: query.clone(),
                info,
                handle: Mutex::new((epoch, handle)),
            }))
        })?;
        self.keys.map().insert(query, entry.clone());
        Ok(entry)
    }
    /// Every private key of the token that hsmkey can use, as cached entries.
    pub fn list_keys(&self, lease: &mut Lease) -> Result<Vec<Arc<KeyEntry>>> {
        let entries = self.run(lease, |session, token, _| {
            let epoch = token.epoch();
            key::list_private_keys(session)?
                .into_iter()
                .map(|(handle, query)| {
                    let info = key::read_info(session, handle, None, &query)?;
                    Ok(Arc::new(KeyEntry {
                        query,
                        info,
                        handle: Mutex::new((epoch, handle)),
                    }))
                })
                .filter(|r: &Result<Arc<KeyEntry>>| {
                    // Keys hsmkey cannot use (other types, EC keys with no public half)
                    // are left out of the listing rather than failing it.
                    !matches!(r, Err(e) if e.kind == Kind::Mechanism)
                })
                .collect::<Result<Vec<_>>>()
        })?;
        let mut keys = self.keys.map();
        for e in &entries {
            keys.insert(e.query.clone(), e.clone());
        }
        Ok(entries)
    }
    /// Deletes the keys matching `query` on a read-write lease; returns how many objects went.
    pub fn delete_key(&self, lease: &mut Lease, query: &KeyQuery) -> Result<usize> {
        if !lease.rw {
            return Err(Error::new(
                Kind::Session,
                "deleting keys needs a read-write session: use pool.session(rw=True)",
            ));
        }
        let n = self.run(lease, |session, _, _| keygen::delete(session, query))?;
        // Cached entries may name what was just deleted.
        self.keys.map().clear();
        Ok(n)
    }
    /// The key's handle in the current epoch (found again after a re-login or when `refind`).
    pub fn key_handle(
        &self,
        session: &Session,
        token: &TokenState,
        entry: &KeyEntry,
        refind: bool,
    ) -> Result<ObjectHandle> {
        let epoch = token.epoch();
        {
            let cached = lock(&entry.handle);
            if !refind && cached.0 == epoch {
                return Ok(cached.1);
            }
        }
        let handle = key::find_private_key(session, &entry.query, &token.describe())?;
        *lock(&entry.handle) = (epoch, handle);
        Ok(handle)
    }
}
