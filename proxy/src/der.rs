//! The few DER encodings the proxy writes itself: X.509 SubjectPublicKeyInfo structures for
//! SSH public keys, so that an SSH key and a certificate holding the same key hash to the
//! same SPKI SHA-256. Encoders only; parsing is left to x509-parser and rustls-webpki.

/// `AlgorithmIdentifier` of Ed25519 (RFC 8410): OID 1.3.101.112, no parameters.
const ED25519_ALG: &[u8] = &[0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70];
/// `AlgorithmIdentifier` of id-ecPublicKey with the prime256v1 curve (RFC 5480).
const P256_ALG: &[u8] = &[
    0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
    0xce, 0x3d, 0x03, 0x01, 0x07,
];
/// `AlgorithmIdentifier` of rsaEncryption with NULL parameters (RFC 3279).
const RSA_ALG: &[u8] = &[
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];

fn tlv(tag: u8, content: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
}

fn spki(alg: &[u8], key: &[u8]) -> Vec<u8> {
    let mut bits = Vec::with_capacity(key.len() + 1);
    bits.push(0); // no unused bits
    bits.extend_from_slice(key);
    let mut body = alg.to_vec();
    tlv(0x03, &bits, &mut body);
    let mut out = Vec::with_capacity(body.len() + 4);
    tlv(0x30, &body, &mut out);
    out
}

/// SPKI of a raw 32-byte Ed25519 public key.
pub fn ed25519_spki(key: &[u8; 32]) -> Vec<u8> {
    spki(ED25519_ALG, key)
}

/// SPKI of an uncompressed SEC1 P-256 point (`04 || x || y`).
pub fn p256_spki(point: &[u8]) -> Vec<u8> {
    spki(P256_ALG, point)
}

/// SPKI of an RSA key from its modulus and exponent as minimal big-endian two's-complement
/// integers (the SSH `mpint` body, which is also the DER INTEGER body).
pub fn rsa_spki(n: &[u8], e: &[u8]) -> Vec<u8> {
    let mut ints = Vec::with_capacity(n.len() + e.len() + 8);
    tlv(0x02, n, &mut ints);
    tlv(0x02, e, &mut ints);
    let mut key = Vec::with_capacity(ints.len() + 4);
    tlv(0x30, &ints, &mut key);
    spki(RSA_ALG, &key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lengths_use_the_long_form() {
        let mut out = Vec::new();
        tlv(0x04, &[0u8; 300], &mut out);
        assert_eq!(&out[..4], &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(out.len(), 304);
    }

    #[test]
    fn ed25519_spki_has_the_rfc8410_shape() {
        let der = ed25519_spki(&[7u8; 32]);
        assert_eq!(der.len(), 44);
        assert_eq!(
            &der[..12],
            &[0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00]
        );
    }
}
