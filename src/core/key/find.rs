//! Looking private keys up: exactly one by label and/or id, or every one the token holds; and
//! refusing a new key whose label, id or public key the token already holds.

use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use super::{not_found, KeyInfo, KeyQuery};
use crate::core::error::{Context, Error, Kind, Result};
use crate::core::mechanism::hex;

/// Finds exactly one private key.
pub fn find_private_key(session: &Session, query: &KeyQuery, token: &str) -> Result<ObjectHandle> {
    let found = session
        .find_objects(&query.template(ObjectClass::PRIVATE_KEY))
        .context(&format!(
            "searching for the private key with {}",
            query.describe()
        ))?;
    match found.len() {
        1 => Ok(found[0]),
        0 => Err(not_found(query, token)),
        n => Err(Error::new(Kind::KeyNotFound, ambiguous(n, query, token))),
    }
}

fn ambiguous(n: usize, query: &KeyQuery, token: &str) -> String {
    if query.id.is_some() {
        format!(
            "{n} private keys match {} on {token}: the token holds the same id twice; delete \
             all but one (hsmkey delete), or give them distinct ids",
            query.describe()
        )
    } else {
        format!(
            "{n} private keys match {} on {token}; give key_id= (CKA_ID) as well to choose one",
            query.describe()
        )
    }
}

/// A private key as listed: its handle, the query that finds it again and its
/// CKA_UNIQUE_ID where the token has one.
pub struct Listed {
    pub handle: ObjectHandle,
    pub query: KeyQuery,
    pub unique_id: Option<Vec<u8>>,
}

/// Every private key in the token (that can be found again: it has a label or an id).
pub fn list_private_keys(session: &Session) -> Result<Vec<Listed>> {
    let handles = session
        .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
        .context("listing the private keys")?;
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        let (label, id, unique_id) = label_and_id(session, handle)?;
        if label.is_some() || id.is_some() {
            out.push(Listed {
                handle,
                query: KeyQuery { label, id },
                unique_id,
            });
        }
    }
    Ok(out)
}

type Names = (Option<String>, Option<Vec<u8>>, Option<Vec<u8>>);

fn label_and_id(session: &Session, handle: ObjectHandle) -> Result<Names> {
    let attrs = session
        .get_attributes(
            handle,
            &[
                AttributeType::Label,
                AttributeType::Id,
                AttributeType::UniqueId,
            ],
        )
        .context("reading a key's label and id")?;
    let (mut label, mut id, mut unique) = (None, None, None);
    for a in attrs {
        match a {
            Attribute::Label(l) if !l.is_empty() => {
                label = Some(String::from_utf8_lossy(&l).into_owned())
            }
            Attribute::Id(i) if !i.is_empty() => id = Some(i),
            Attribute::UniqueId(u) if !u.is_empty() => unique = Some(u),
            _ => {}
        }
    }
    Ok((label, id, unique))
}

/// Refuses a new key whose label or id a private key of the token has already (finding keys
/// would become ambiguous). Same words as the CLI's check.
pub fn refuse_taken_names(session: &Session, label: &str, id: &[u8]) -> Result<()> {
    let by_label = KeyQuery {
        label: Some(label.to_owned()),
        id: None,
    };
    let found = session
        .find_objects(&by_label.template(ObjectClass::PRIVATE_KEY))
        .context("searching for keys with the new key's label")?;
    if let Some(&h) = found.first() {
        let (_, other_id, _) = label_and_id(session, h)?;
        return Err(Error::value(format!(
            "the token has a key with label '{label}' already (id {}): choose another label, \
             or delete that key first",
            hex(&other_id.unwrap_or_default())
        )));
    }
    if id.is_empty() {
        return Ok(());
    }
    let by_id = KeyQuery {
        label: None,
        id: Some(id.to_vec()),
    };
    let found = session
        .find_objects(&by_id.template(ObjectClass::PRIVATE_KEY))
        .context("searching for keys with the new key's id")?;
    if let Some(&h) = found.first() {
        let (other_label, _, _) = label_and_id(session, h)?;
        return Err(Error::value(format!(
            "the token has a key with id {} already (label '{}'): choose another key_id",
            hex(id),
            other_label.unwrap_or_default()
        )));
    }
    Ok(())
}

/// Refuses importing a key whose public key one of `existing` has already (its kid would be
/// published twice).
pub fn refuse_same_public_key(new: &KeyInfo, existing: &[KeyInfo]) -> Result<()> {
    match existing.iter().find(|k| k.same_public_key(new)) {
        Some(k) => Err(Error::value(format!(
            "the token has this key already ({}, id {}): importing it again would publish the \
             same key twice; use that key, or delete it first",
            k.label
                .as_deref()
                .map(|l| format!("label '{l}'"))
                .unwrap_or_else(|| "no label".into()),
            hex(&k.id)
        ))),
        None => Ok(()),
    }
}
