//! Looking private keys up: exactly one by label and/or id, or every one the token holds.

use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use super::{not_found, KeyQuery};
use crate::core::error::{Context, Error, Kind, Result};

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
        n => Err(Error::new(
            Kind::KeyNotFound,
            format!(
                "{n} private keys match {} on {token}; give key_id= (CKA_ID) as well to choose one",
                query.describe()
            ),
        )),
    }
}

/// Every private key in the token (that can be found again: it has a label or an id), with
/// the query that finds it.
pub fn list_private_keys(session: &Session) -> Result<Vec<(ObjectHandle, KeyQuery)>> {
    let handles = session
        .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
        .context("listing the private keys")?;
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        let attrs = session
            .get_attributes(handle, &[AttributeType::Label, AttributeType::Id])
            .context("reading a key's label and id")?;
        let mut label = None;
        let mut id = None;
        for a in attrs {
            match a {
                Attribute::Label(l) if !l.is_empty() => {
                    label = Some(String::from_utf8_lossy(&l).into_owned())
                }
                Attribute::Id(i) if !i.is_empty() => id = Some(i),
                _ => {}
            }
        }
        if label.is_some() || id.is_some() {
            out.push((handle, KeyQuery { label, id }));
        }
    }
    Ok(out)
}
