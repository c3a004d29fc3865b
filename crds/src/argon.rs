//! argon2id hashing and verification with a reused per-thread work area.
//!
//! argon2 needs `m` KiB of memory per run (19 MiB with the default parameters). Allocating
//! it per run, as the crate's convenience functions do, makes glibc raise its mmap threshold
//! and then fragment the heap: 1 000 hashes left an operator at 550 MiB RSS. Reusing one
//! buffer per thread keeps it at one work area per hashing thread. Parameters are bounded
//! too, so a hash string with absurd costs cannot make a hub allocate gigabytes.

use std::cell::RefCell;

use argon2::password_hash::{Output, PasswordHash, SaltString, rand_core::OsRng};
use argon2::{Algorithm, Argon2, Block, Params, Version};

/// Largest memory cost accepted, in KiB (64 MiB).
pub const MAX_M_COST: u32 = 64 * 1024;
/// Largest time cost accepted.
pub const MAX_T_COST: u32 = 16;
/// Largest parallelism accepted.
pub const MAX_P_COST: u32 = 8;

thread_local! {
    static BLOCKS: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

fn with_blocks<T>(count: usize, f: impl FnOnce(&mut [Block]) -> T) -> T {
    BLOCKS.with(|cell| {
        let mut blocks = cell.borrow_mut();
        if blocks.len() < count {
            blocks.resize(count, Block::default());
        }
        f(&mut blocks[..count])
    })
}

/// Checks that the costs of a hash are within the bounds above.
pub fn check_params(params: &Params) -> Result<(), String> {
    if params.m_cost() > MAX_M_COST || params.t_cost() > MAX_T_COST || params.p_cost() > MAX_P_COST
    {
        return Err(format!(
            "argon2 costs m={}, t={}, p={} exceed the limits m<={MAX_M_COST}, t<={MAX_T_COST}, p<={MAX_P_COST}",
            params.m_cost(),
            params.t_cost(),
            params.p_cost()
        ));
    }
    Ok(())
}

/// Hashes `password` with argon2id (default parameters, random salt) into a PHC string.
pub fn hash(password: &[u8]) -> Result<String, String> {
    let params = Params::default();
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_bytes = [0u8; 64];
    let salt_raw = salt
        .decode_b64(&mut salt_bytes)
        .map_err(|e| e.to_string())?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    with_blocks(params.block_count(), |blocks| {
        argon.hash_password_into_with_memory(password, salt_raw, &mut out, blocks)
    })
    .map_err(|e| e.to_string())?;
    let phc = PasswordHash {
        algorithm: argon2::ARGON2ID_IDENT,
        version: Some(Version::V0x13.into()),
        params: params
            .try_into()
            .map_err(|e: argon2::password_hash::Error| e.to_string())?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| e.to_string())?),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the argon2id PHC string `phc` (constant-time comparison).
/// Hashes of other algorithms, malformed ones and ones over the cost bounds never match.
pub fn verify(password: &[u8], phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    if parsed.algorithm != argon2::ARGON2ID_IDENT {
        return false;
    }
    let (Ok(params), Some(salt), Some(expected)) =
        (Params::try_from(&parsed), parsed.salt, parsed.hash)
    else {
        return false;
    };
    if check_params(&params).is_err() {
        return false;
    }
    let version = parsed
        .version
        .and_then(|v| Version::try_from(v).ok())
        .unwrap_or(Version::V0x13);
    let mut salt_bytes = [0u8; 64];
    let Ok(salt_raw) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    let argon = Argon2::new(Algorithm::Argon2id, version, params.clone());
    let computed = with_blocks(params.block_count(), |blocks| {
        argon.hash_password_into_with_memory(password, salt_raw, &mut out, blocks)
    });
    // `Output`'s equality is constant-time.
    computed.is_ok() && Output::new(&out).is_ok_and(|o| o == expected)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_interop_with_the_crate() {
        let phc = hash(b"pw").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify(b"pw", &phc));
        assert!(!verify(b"pw!", &phc));
        // Hashes made by the crate's own API (and so by other tools) verify here, and ours there.
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let theirs = Argon2::default()
            .hash_password(b"x", &SaltString::generate(&mut OsRng))
            .unwrap()
            .to_string();
        assert!(verify(b"x", &theirs));
        let ours = PasswordHash::new(&phc).unwrap();
        assert!(Argon2::default().verify_password(b"pw", &ours).is_ok());
        assert!(!verify(
            b"pw",
            "$argon2id$v=19$m=4194304,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
        ));
        assert!(!verify(b"pw", "not a hash"));
    }
}
