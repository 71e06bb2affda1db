//! Keys found once per login epoch: `from_hsm` in a short session block costs a map look-up,
//! not a `C_FindObjects`. A lookup by label or id is trusted for `key_cache_ttl` seconds (or
//! until `refresh()`); after that the next lookup searches once and, when the search finds
//! the same handle in the same epoch, keeps the entry (one search, nothing more; on tokens
//! with CKA_UNIQUE_ID one attribute read as well).
//!
//! Identity: an entry is bound to the public key it was made with. Whenever its key is found
//! again (stale handle, re-login, expiry, refresh), the found key is compared with it
//! (`key::same_key`); a different key marks the entry changed (its key objects raise
//! `HSMKeyChangedError` from then on) and the pool's cache takes the new key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use cryptoki::object::{Attribute, AttributeType, ObjectHandle};
use cryptoki::session::Session;

use super::{Lease, Pool};
use crate::core::error::{Context, Error, Kind, Result};
use crate::core::key::{self, Identity, KeyInfo, KeyQuery, Signer};
use crate::core::keygen;
use crate::core::module::lock;
use crate::core::token::TokenState;

/// Where a key entry's handle stands.
struct HandleState {
    epoch: u64,
    handle: ObjectHandle,
    /// The key under the entry's query is another key now: every use raises.
    changed: bool,
}

/// A private key found in the token, with its handle cached per login epoch.
pub struct KeyEntry {
    pub query: KeyQuery,
    pub info: KeyInfo,
    handle: Mutex<HandleState>,
}

impl KeyEntry {
    fn new(query: KeyQuery, info: KeyInfo, epoch: u64, handle: ObjectHandle) -> Arc<Self> {
        Arc::new(KeyEntry {
            query,
            info,
            handle: Mutex::new(HandleState {
                epoch,
                handle,
                changed: false,
            }),
        })
    }
    fn state(&self) -> (u64, ObjectHandle, bool) {
        let st = lock(&self.handle);
        (st.epoch, st.handle, st.changed)
    }
    fn set_handle(&self, epoch: u64, handle: ObjectHandle) {
        let mut st = lock(&self.handle);
        st.epoch = epoch;
        st.handle = handle;
    }
    fn mark_changed(&self) {
        lock(&self.handle).changed = true;
    }
    /// True once the key under this entry's label or id was found to be another key.
    pub fn is_changed(&self) -> bool {
        lock(&self.handle).changed
    }
}

struct Cached {
    entry: Arc<KeyEntry>,
    /// When the lookup was last confirmed by a search.
    found: Instant,
    /// `refresh()` asked for a full lookup (read and compare, not only a search).
    forced: bool,
}

/// The pool's entries by query.
#[derive(Default)]
pub(super) struct KeyCache(Mutex<HashMap<KeyQuery, Cached>>);

impl KeyCache {
    fn map(&self) -> MutexGuard<'_, HashMap<KeyQuery, Cached>> {
        lock(&self.0)
    }

    /// Forgets every entry (keys deleted, pool closed, forked child).
    pub(super) fn clear(&self) {
        self.map().clear();
    }

    fn insert(&self, query: &KeyQuery, entry: &Arc<KeyEntry>, found: Instant) {
        self.map().insert(
            query.clone(),
            Cached {
                entry: entry.clone(),
                found,
                forced: false,
            },
        );
    }

    /// Forgets `entry` if it is the one cached for its query.
    fn forget(&self, entry: &Arc<KeyEntry>) {
        let mut map = self.map();
        if map
            .get(&entry.query)
            .is_some_and(|c| Arc::ptr_eq(&c.entry, entry))
        {
            map.remove(&entry.query);
        }
    }
}

/// The signer probe signatures use on `token`.
fn signer(token: &TokenState) -> Signer<'_> {
    Signer {
        mechanisms: token,
        raw: token.module.raw.as_ref(),
    }
}

/// CKA_UNIQUE_ID of an object, if the token gives one.
fn unique_id(session: &Session, handle: ObjectHandle) -> Result<Option<Vec<u8>>> {
    let attrs = session
        .get_attributes(handle, &[AttributeType::UniqueId])
        .context("reading CKA_UNIQUE_ID")?;
    Ok(attrs.into_iter().find_map(|a| match a {
        Attribute::UniqueId(u) if !u.is_empty() => Some(u),
        _ => None,
    }))
}

impl Pool {
    /// The entry for `query` if the cache holds it as `find_key` would return it (found in
    /// the current login epoch, within `key_cache_ttl`, not forced or changed): no session,
    /// no PKCS#11 call. Else None (then `find_key`).
    pub fn cached_key(&self, query: &KeyQuery) -> Option<Arc<KeyEntry>> {
        let epoch = {
            let mut st = lock(&self.state);
            self.current(&mut st).ok()??.token.epoch()
        };
        let map = self.keys.map();
        let c = map.get(query)?;
        let (found_epoch, _, changed) = c.entry.state();
        let fresh = !c.forced
            && !changed
            && found_epoch == epoch
            && Instant::now().saturating_duration_since(c.found) < self.cfg.key_cache_ttl;
        fresh.then(|| c.entry.clone())
    }

    /// Forgets every cached lookup: the next `find_key` / `list_keys` looks at the token as
    /// it is now (and compares what it finds with what the pool's key objects were made
    /// with).
    pub fn refresh(&self) {
        for cached in self.keys.map().values_mut() {
            cached.forced = true;
        }
    }

    /// The key entry for `query`: from the cache when found in this login epoch less than
    /// `key_cache_ttl` ago, else looked up again through `lease`.
    pub fn find_key(&self, lease: &mut Lease, query: &KeyQuery) -> Result<Arc<KeyEntry>> {
        let now = Instant::now();
        let previous = match self.keys.map().get(query) {
            Some(c) => {
                let (epoch, _, changed) = c.entry.state();
                if !c.forced
                    && !changed
                    && epoch == lease.token.epoch()
                    && now.saturating_duration_since(c.found) < self.cfg.key_cache_ttl
                {
                    return Ok(c.entry.clone());
                }
                Some((c.entry.clone(), c.forced))
            }
            None => None,
        };
        let entry = self.run(lease, |session, token, _| {
            let epoch = token.epoch();
            let handle = key::find_private_key(session, query, &token.describe())?;
            if let Some((old, forced)) = &previous {
                let (old_epoch, old_handle, changed) = old.state();
                // The same handle in the same epoch: the same object, unless the token
                // reuses handles (then CKA_UNIQUE_ID, where it has one, tells).
                if !forced && !changed && old_epoch == epoch && old_handle == handle {
                    let same = match &old.info.unique_id {
                        None => true,
                        Some(u) => unique_id(session, handle)?.as_ref() == Some(u),
                    };
                    if same {
                        return Ok(old.clone());
                    }
                }
            }
            let info = key::read_info(session, handle, None, query, Some(signer(token)))?;
            if let Some((old, _)) = &previous {
                if !old.is_changed() && old.info.same_public_key(&info) {
                    old.set_handle(epoch, handle);
                    return Ok(old.clone());
                }
                old.mark_changed();
            }
            Ok(KeyEntry::new(query.clone(), info, epoch, handle))
        })?;
        self.keys.insert(query, &entry, now);
        Ok(entry)
    }
    /// Generates a key pair on a read-write lease and returns its entry (cached like a found
    /// key). A label or id the token has already is refused.
    pub fn generate_key(&self, lease: &mut Lease, spec: &keygen::KeySpec) -> Result<Arc<KeyEntry>> {
        let query = KeyQuery::new(Some(spec.label.clone()), Some(spec.id.clone()))?;
        self.store_key(lease, "generating", query, None, |s| {
            keygen::generate(s, spec)
        })
    }
    /// Imports a private key on a read-write lease and returns its entry. A label, id or
    /// public key the token has already is refused.
    pub fn import_key(&self, lease: &mut Lease, import: &keygen::Import) -> Result<Arc<KeyEntry>> {
        let query = KeyQuery::new(Some(import.label.clone()), Some(import.id.clone()))?;
        let public = import.public_info()?;
        self.store_key(lease, "importing", query, Some(public), |s| {
            keygen::import(s, import)
        })
    }
    /// Makes a key object with `make` (on a read-write lease) and caches its entry. On the
    /// retry after a lost session, the first attempt may have made the key before its answer
    /// was lost (a network HSM): the retry looks for it before making another.
    fn store_key(
        &self,
        lease: &mut Lease,
        what: &str,
        query: KeyQuery,
        public: Option<KeyInfo>,
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
            let (handle, public_handle) = match existing {
                Some(h) => (h, None),
                None => {
                    if !tried {
                        let label = query.label.as_deref().unwrap_or_default();
                        let id = query.id.as_deref().unwrap_or_default();
                        key::refuse_taken_names(session, label, id)?;
                        if let Some(new) = &public {
                            let others = self.infos(session)?;
                            key::refuse_same_public_key(new, &others)?;
                        }
                    }
                    tried = true;
                    let (private, public) = make(session)?;
                    (private, Some(public))
                }
            };
            tried = true;
            let info = key::read_info(session, handle, public_handle, &query, Some(signer(token)))?;
            Ok(KeyEntry::new(query.clone(), info, epoch, handle))
        })?;
        self.keys.insert(&entry.query, &entry, Instant::now());
        Ok(entry)
    }
    /// The public halves of every usable private key of the token (for the duplicate check
    /// of an import).
    fn infos(&self, session: &Session) -> Result<Vec<KeyInfo>> {
        let mut out = Vec::new();
        for listed in key::list_private_keys(session)? {
            // Best effort: a key that cannot be read cannot be the same key either.
            // Unproven points will do: a match only refuses the import, and a proof of every
            // key of the token would cost a signature each.
            if let Ok(info) = key::read_info(session, listed.handle, None, &listed.query, None) {
                out.push(info);
            }
        }
        Ok(out)
    }
    /// Every private key of the token that hsmkey can use, as cached entries. A key whose
    /// entry is cached with the same handle in this epoch is not read again.
    pub fn list_keys(&self, lease: &mut Lease) -> Result<Vec<Arc<KeyEntry>>> {
        let now = Instant::now();
        let entries = self.run(lease, |session, token, _| {
            let epoch = token.epoch();
            let mut out = Vec::new();
            let found = key::list_private_keys(session)?;
            if found.is_empty() {
                // Nothing, or no token any more (SoftHSM2 answers searches on a token
                // deleted under it with nothing): tell them apart.
                token.check_present()?;
            }
            for listed in found {
                let previous = self.keys.map().get(&listed.query).map(|c| c.entry.clone());
                if let Some(old) = &previous {
                    let (old_epoch, old_handle, changed) = old.state();
                    if !changed
                        && old_epoch == epoch
                        && old_handle == listed.handle
                        && old.info.unique_id == listed.unique_id
                    {
                        out.push(old.clone());
                        continue;
                    }
                }
                let info = match key::read_info(
                    session,
                    listed.handle,
                    None,
                    &listed.query,
                    Some(signer(token)),
                ) {
                    Ok(info) => info,
                    // Keys hsmkey cannot use (other types, EC keys with no proven public
                    // half) are left out of the listing rather than failing it.
                    Err(e) if unusable(&e) => continue,
                    Err(e) => return Err(e),
                };
                if let Some(old) = &previous {
                    if !old.is_changed() && old.info.same_public_key(&info) {
                        old.set_handle(epoch, listed.handle);
                        out.push(old.clone());
                        continue;
                    }
                    old.mark_changed();
                }
                out.push(KeyEntry::new(listed.query, info, epoch, listed.handle));
            }
            Ok(out)
        })?;
        for e in &entries {
            self.keys.insert(&e.query, e, now);
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
        self.keys.clear();
        Ok(n)
    }
    /// The key's handle in the current epoch: the cached one, or (after a re-login, or when
    /// `refind` after a stale handle) the key found again and proven to be the same key.
    pub fn key_handle(
        &self,
        session: &Session,
        token: &TokenState,
        entry: &Arc<KeyEntry>,
        refind: bool,
    ) -> Result<ObjectHandle> {
        self.checked_handle(session, token, entry, refind, false)
            .map(|(handle, _)| handle)
    }
    /// Like [`Pool::key_handle`], for a signature: a key found again that only a signature can
    /// prove (SoftHSM2's EC keys) comes back with `Some(epoch)`, and the caller proves it
    /// with the signature it makes ([`Pool::confirm_key`]) instead of a probe signature
    /// first: healing costs no extra call.
    pub fn key_handle_for_signature(
        &self,
        session: &Session,
        token: &TokenState,
        entry: &Arc<KeyEntry>,
        refind: bool,
    ) -> Result<(ObjectHandle, Option<u64>)> {
        self.checked_handle(session, token, entry, refind, true)
    }
    /// The verdict on a handle from [`Pool::key_handle_for_signature`]: `verified` says
    /// whether the signature it made verifies against the entry's public key.
    pub fn confirm_key(
        &self,
        token: &TokenState,
        entry: &Arc<KeyEntry>,
        handle: ObjectHandle,
        epoch: u64,
        verified: bool,
    ) -> Result<()> {
        if verified {
            entry.set_handle(epoch, handle);
            return Ok(());
        }
        Err(self.key_changed(token, entry))
    }
    fn checked_handle(
        &self,
        session: &Session,
        token: &TokenState,
        entry: &Arc<KeyEntry>,
        refind: bool,
        defer_probe: bool,
    ) -> Result<(ObjectHandle, Option<u64>)> {
        let epoch = token.epoch();
        {
            let cached = lock(&entry.handle);
            if cached.changed {
                return Err(key::changed_error(&entry.query, &token.describe()));
            }
            if !refind && cached.epoch == epoch {
                return Ok((cached.handle, None));
            }
        }
        let handle = key::find_private_key(session, &entry.query, &token.describe())?;
        match key::same_key(session, handle, &entry.info, signer(token), defer_probe)? {
            Identity::Same => {
                entry.set_handle(epoch, handle);
                Ok((handle, None))
            }
            Identity::Unproven => Ok((handle, Some(epoch))),
            Identity::Different => Err(self.key_changed(token, entry)),
        }
    }
    /// Marks `entry` changed, makes the pool forget it, and says so.
    fn key_changed(&self, token: &TokenState, entry: &Arc<KeyEntry>) -> Error {
        crate::core::log::log(
            crate::core::log::WARNING,
            &format!(
                "the key with {} on {} was replaced by another key; its old key objects raise \
                 HSMKeyChangedError",
                entry.query.describe(),
                token.describe()
            ),
        );
        entry.mark_changed();
        self.keys.forget(entry);
        key::changed_error(&entry.query, &token.describe())
    }
}

/// A key left out of listings: a type hsmkey does not use, or an EC key whose public half
/// cannot be proven.
fn unusable(e: &Error) -> bool {
    e.kind == Kind::Mechanism || (e.kind == Kind::KeyNotFound && e.rv.is_none())
}
