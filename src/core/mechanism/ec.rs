//! ECDSA: SoftHSM2 and most tokens offer only the raw `CKM_ECDSA`, so the message is hashed
//! locally and the token signs the digest; the signature comes back as `r || s`.

use cryptoki::mechanism::{Mechanism, MechanismType};

use crate::core::error::Result;
use crate::core::mechanism::{digest_or_check, require, HashAlg, MechanismSet, Prepared};

pub(super) fn prepare_ecdsa(
    hash: HashAlg,
    prehashed: bool,
    data: &[u8],
    token: &dyn MechanismSet,
) -> Result<Prepared<'static>> {
    require(token, MechanismType::ECDSA, "CKM_ECDSA")?;
    let digest = digest_or_check(hash, prehashed, data)?;
    Ok(Prepared {
        mechanism: Mechanism::Ecdsa,
        data: Some(digest),
    })
}
