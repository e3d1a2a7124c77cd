//! `tls-server-end-point` channel binding data (RFC 5929 section 4.1): the
//! hash of the server's certificate, with the hash function of the
//! certificate's signature algorithm, except that MD5 and SHA-1 are replaced
//! by SHA-256. PostgreSQL and libpq compute it the same way.
//!
//! Only the certificate's outer `signatureAlgorithm` is needed, so this reads
//! just enough DER to reach it.

use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

/// Channel binding data for a DER certificate, or `None` when its signature
/// algorithm has no usable hash (e.g. Ed25519): then channel binding is not
/// offered, as PostgreSQL cannot do it either.
pub fn tls_server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    let hash = signature_hash(cert_der)?;
    Some(match hash {
        Hash::Sha224 => Sha224::digest(cert_der).to_vec(),
        Hash::Sha256 => Sha256::digest(cert_der).to_vec(),
        Hash::Sha384 => Sha384::digest(cert_der).to_vec(),
        Hash::Sha512 => Sha512::digest(cert_der).to_vec(),
    })
}

/// One DER TLV: (tag, contents, rest).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let mut len = 0usize;
        for &b in &rest[..n] {
            len = (len << 8) | b as usize;
        }
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const OID: u8 = 0x06;

// 1.2.840.113549.1.1.x
const PKCS1: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
// 1.2.840.10045.4.x (ecdsa-with-SHA1 is 4.1, ecdsa-with-SHA2 is 4.3.x)
const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
// 1.2.840.10040.4.3 dsa-with-sha1
const DSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x03];
// 2.16.840.1.101.3.4.3.x: dsa-with-sha2
const DSA_SHA2: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03];
// 2.16.840.1.101.3.4.2.x: sha256 (1), sha384 (2), sha512 (3), sha224 (4)
const NIST_HASH: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02];

fn signature_hash(cert_der: &[u8]) -> Option<Hash> {
    let (tag, cert, _) = tlv(cert_der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, _tbs, rest) = tlv(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, alg, _) = tlv(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, oid, params) = tlv(alg)?;
    if tag != OID {
        return None;
    }
    if let Some(last) = oid.strip_prefix(PKCS1) {
        return match last {
            // md5WithRSA (4), sha1WithRSA (5): SHA-256 per RFC 5929.
            [4] | [5] | [11] => Some(Hash::Sha256),
            [12] => Some(Hash::Sha384),
            [13] => Some(Hash::Sha512),
            [14] => Some(Hash::Sha224),
            // RSASSA-PSS: the hash is in the parameters (default SHA-1).
            [10] => pss_hash(params),
            _ => None,
        };
    }
    if let Some(last) = oid.strip_prefix(ECDSA) {
        return match last {
            [1] => Some(Hash::Sha256),
            [3, 1] => Some(Hash::Sha224),
            [3, 2] => Some(Hash::Sha256),
            [3, 3] => Some(Hash::Sha384),
            [3, 4] => Some(Hash::Sha512),
            _ => None,
        };
    }
    if oid == DSA_SHA1 {
        return Some(Hash::Sha256);
    }
    if let Some(last) = oid.strip_prefix(DSA_SHA2) {
        return match last {
            [1] => Some(Hash::Sha224),
            [2] => Some(Hash::Sha256),
            _ => None,
        };
    }
    None
}

/// RSASSA-PSS-params ::= SEQUENCE { hashAlgorithm [0] AlgorithmIdentifier
/// DEFAULT sha1, ... }
fn pss_hash(params: &[u8]) -> Option<Hash> {
    let Some((SEQUENCE, seq, _)) = tlv(params) else {
        return Some(Hash::Sha256);
    };
    match tlv(seq) {
        Some((0xa0, explicit, _)) => {
            let (tag, alg, _) = tlv(explicit)?;
            if tag != SEQUENCE {
                return None;
            }
            let (tag, oid, _) = tlv(alg)?;
            if tag != OID {
                return None;
            }
            match oid.strip_prefix(NIST_HASH)? {
                [1] => Some(Hash::Sha256),
                [2] => Some(Hash::Sha384),
                [3] => Some(Hash::Sha512),
                [4] => Some(Hash::Sha224),
                _ => None,
            }
        }
        // Absent: SHA-1, replaced by SHA-256.
        _ => Some(Hash::Sha256),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake certificate: SEQUENCE { tbs SEQUENCE, AlgorithmIdentifier, BIT STRING }.
    fn cert_with(oid: &[u8], params: &[u8]) -> Vec<u8> {
        let mut alg = vec![OID, oid.len() as u8];
        alg.extend_from_slice(oid);
        alg.extend_from_slice(params);
        let mut body = vec![SEQUENCE, 3, 2, 1, 0];
        body.push(SEQUENCE);
        body.push(alg.len() as u8);
        body.extend_from_slice(&alg);
        body.extend_from_slice(&[0x03, 2, 0, 0xff]);
        let mut der = vec![SEQUENCE, body.len() as u8];
        der.extend_from_slice(&body);
        der
    }

    #[test]
    fn hash_follows_signature_algorithm() {
        let ecdsa256 = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
        let ecdsa384 = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
        let rsa_sha1 = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05];
        let rsa_md5 = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x04];
        let rsa_sha512 = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d];
        let ed25519 = [0x2b, 0x65, 0x70];
        for (oid, want) in [
            (&ecdsa256[..], Some(Hash::Sha256)),
            (&ecdsa384[..], Some(Hash::Sha384)),
            (&rsa_sha1[..], Some(Hash::Sha256)),
            (&rsa_md5[..], Some(Hash::Sha256)),
            (&rsa_sha512[..], Some(Hash::Sha512)),
            (&ed25519[..], None),
        ] {
            let der = cert_with(oid, &[0x05, 0x00]);
            assert_eq!(signature_hash(&der), want, "{oid:02x?}");
        }
        let der = cert_with(&ecdsa384, &[]);
        assert_eq!(
            tls_server_end_point(&der).unwrap(),
            Sha384::digest(&der).to_vec()
        );
        assert!(tls_server_end_point(&cert_with(&ed25519, &[])).is_none());
        assert!(tls_server_end_point(b"\x30\x05garbage").is_none());
    }

    #[test]
    fn pss_reads_its_hash() {
        let pss = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];
        // SEQUENCE { [0] { SEQUENCE { OID sha384 } } }
        let params = [
            0x30, 0x0f, 0xa0, 0x0d, 0x30, 0x0b, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03,
            0x04, 0x02, 0x02,
        ];
        assert_eq!(
            signature_hash(&cert_with(&pss, &params)),
            Some(Hash::Sha384)
        );
        assert_eq!(
            signature_hash(&cert_with(&pss, &[0x30, 0x00])),
            Some(Hash::Sha256)
        );
    }
}
