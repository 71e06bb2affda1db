//! EdDSA (Ed25519, Ed448): pure EdDSA in one `C_Sign` over the whole message (no local
//! hashing, no multi-part signing).

use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::{Mechanism, MechanismType};

use crate::core::error::Result;
use crate::core::mechanism::{require, MechanismSet, Prepared};

pub(super) fn prepare_eddsa(token: &dyn MechanismSet) -> Result<Prepared<'static>> {
    require(token, MechanismType::EDDSA, "CKM_EDDSA")?;
    Ok(Prepared {
        mechanism: Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
        data: None,
    })
}
