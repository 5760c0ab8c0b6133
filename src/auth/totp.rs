//! The second factor: time-based one-time codes (RFC 6238) and single-use
//! recovery codes.
//!
//! Codes are what authenticator apps show: HMAC-SHA1, 6 digits, a new one
//! every 30 seconds. A code is accepted for its own step and one step either
//! side (a phone's clock drifts, and typing takes time); [`TotpSecret::verify`]
//! says *which* step matched so the login can record it and refuse that step
//! and every earlier one afterwards. Replay protection lives in the store,
//! where one conditional update decides between concurrent logins.
//!
//! Clients have only a password field, so the code travels in it:
//! `password:123456`. [`split_code`] splits at the last `:`, and only when
//! what follows looks like a code, so passwords containing `:` keep working.
//!
//! Recovery codes are 60 random bits each, kept as SHA-256: being random, they
//! need no slow hash.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use rand::Rng;
use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, Secret, TOTP};

/// The issuer authenticator apps show next to the account name.
pub const ISSUER: &str = "pgward";
/// Seconds per code.
pub const STEP_SECONDS: u64 = 30;
const DIGITS: usize = 6;
/// Steps accepted on either side of the current one.
pub const SKEW_STEPS: u64 = 1;
/// Recovery codes issued per enrollment.
pub const RECOVERY_CODES: usize = 10;

/// Crockford's base32 alphabet: no `i`, `l`, `o` or `u`, so a code read off
/// paper cannot be mistyped as another; 5 bits per character.
const RECOVERY_ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
/// 12 characters × 5 bits = 60 bits.
const RECOVERY_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum TotpError {
    #[error("the stored TOTP secret is not valid base32 of at least 128 bits")]
    BadSecret,
}

/// The time step (30-second window since the Unix epoch) `t` falls in.
pub fn step_at(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / STEP_SECONDS)
        .unwrap_or(0)
}

/// A shared TOTP secret. `Debug` never shows it.
#[derive(Clone)]
pub struct TotpSecret {
    base32: String,
    bytes: Vec<u8>,
}

impl fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpSecret(<redacted>)")
    }
}

impl TotpSecret {
    /// 160 random bits, the size RFC 4226 recommends.
    pub fn generate() -> TotpSecret {
        let mut bytes = [0u8; 20];
        rand::rngs::OsRng.fill(&mut bytes[..]);
        let base32 = match Secret::Raw(bytes.to_vec()).to_encoded() {
            Secret::Encoded(s) => s,
            Secret::Raw(_) => unreachable!("to_encoded returns Encoded"),
        };
        TotpSecret {
            base32,
            bytes: bytes.to_vec(),
        }
    }

    /// A secret as the store and authenticator apps keep it (RFC 4648
    /// base32, no padding).
    pub fn from_base32(s: &str) -> Result<TotpSecret, TotpError> {
        let bytes = Secret::Encoded(s.to_string())
            .to_bytes()
            .map_err(|_| TotpError::BadSecret)?;
        if bytes.len() < 16 {
            return Err(TotpError::BadSecret);
        }
        Ok(TotpSecret {
            base32: s.to_string(),
            bytes,
        })
    }

    pub fn base32(&self) -> &str {
        &self.base32
    }

    fn totp(&self, account: &str) -> TOTP {
        // Unchecked: the secret length is checked above, 6 digits is valid,
        // and the issuer and user names cannot contain ':'.
        TOTP::new_unchecked(
            Algorithm::SHA1,
            DIGITS,
            SKEW_STEPS as u8,
            STEP_SECONDS,
            self.bytes.clone(),
            Some(ISSUER.to_string()),
            account.to_string(),
        )
    }

    /// `otpauth://totp/pgward:NAME?secret=…&issuer=pgward`, what an
    /// authenticator app scans.
    pub fn otpauth_uri(&self, user: &str) -> String {
        self.totp(user).get_url()
    }

    /// The code for a time step.
    pub fn code_at(&self, step: u64) -> String {
        self.totp("").generate(step * STEP_SECONDS)
    }

    /// The step `code` belongs to, if it is the code of the step `now` falls
    /// in or of one step either side; the latest such step when several
    /// match. Every candidate is compared, in constant time.
    pub fn verify(&self, code: &str, now: SystemTime) -> Option<u64> {
        let current = step_at(now);
        let totp = self.totp("");
        let mut matched = None;
        for step in current.saturating_sub(SKEW_STEPS)..=current + SKEW_STEPS {
            let expected = totp.generate(step * STEP_SECONDS);
            if bool::from(expected.as_bytes().ct_eq(code.as_bytes())) {
                matched = Some(step);
            }
        }
        matched
    }
}

/// An authenticator app's QR code for `uri`, drawn with Unicode half blocks
/// for a terminal with a dark background.
pub fn terminal_qr(uri: &str) -> Result<String, qrcode::types::QrError> {
    use qrcode::render::unicode::Dense1x2;
    let code = qrcode::QrCode::new(uri.as_bytes())?;
    Ok(code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

/// A recovery code, normalised: 12 lowercase characters of
/// [`RECOVERY_ALPHABET`]. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct RecoveryCode(String);

impl fmt::Debug for RecoveryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecoveryCode(<redacted>)")
    }
}

impl RecoveryCode {
    /// A fresh set of [`RECOVERY_CODES`] codes.
    pub fn generate_set() -> Vec<RecoveryCode> {
        let mut rng = rand::rngs::OsRng;
        (0..RECOVERY_CODES)
            .map(|_| {
                let code = (0..RECOVERY_LEN)
                    .map(|_| RECOVERY_ALPHABET[rng.gen_range(0..RECOVERY_ALPHABET.len())] as char)
                    .collect();
                RecoveryCode(code)
            })
            .collect()
    }

    /// Reads a code as a person types it: any case, with or without the
    /// dashes, `o` for `0` and `i`/`l` for `1` (Crockford's reading rules).
    pub fn parse(s: &str) -> Option<RecoveryCode> {
        let mut code = String::with_capacity(RECOVERY_LEN);
        for c in s.chars() {
            let c = match c.to_ascii_lowercase() {
                '-' | ' ' => continue,
                'o' => '0',
                'i' | 'l' => '1',
                c if c.is_ascii() && RECOVERY_ALPHABET.contains(&(c as u8)) => c,
                _ => return None,
            };
            code.push(c);
        }
        (code.len() == RECOVERY_LEN).then_some(RecoveryCode(code))
    }

    /// `xxxx-xxxx-xxxx`, as shown to the person.
    pub fn display(&self) -> String {
        let (a, rest) = self.0.split_at(4);
        let (b, c) = rest.split_at(4);
        format!("{a}-{b}-{c}")
    }

    /// SHA-256 of the normalised code, hex: what the store keeps.
    pub fn hash(&self) -> String {
        hex::encode(ring::digest::digest(
            &ring::digest::SHA256,
            self.0.as_bytes(),
        ))
    }
}

/// What followed the last `:` of a password field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Code {
    /// Digits: a TOTP code (the wrong number of digits simply never matches,
    /// so a typo is reported as a wrong code, not a wrong password).
    Totp(String),
    Recovery(RecoveryCode),
}

/// Splits `password:code` at the last `:` when what follows looks like a
/// code (digits, or a recovery code); otherwise the whole field is the
/// password. Only called for people with a second factor enrolled, and only
/// string work, so it costs the same whatever the answer.
pub fn split_code(field: &str) -> (&str, Option<Code>) {
    let Some((password, suffix)) = field.rsplit_once(':') else {
        return (field, None);
    };
    let suffix = suffix.trim();
    if let Some(code) = RecoveryCode::parse(suffix) {
        return (password, Some(Code::Recovery(code)));
    }
    if (1..=10).contains(&suffix.len()) && suffix.bytes().all(|b| b.is_ascii_digit()) {
        return (password, Some(Code::Totp(suffix.to_string())));
    }
    (field, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// RFC 6238 appendix B's SHA-1 key, "12345678901234567890".
    fn rfc_secret() -> TotpSecret {
        TotpSecret::from_base32("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ").unwrap()
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn codes_match_the_rfc_test_vectors() {
        // The RFC lists 8 digits; apps show the last 6.
        let s = rfc_secret();
        assert_eq!(s.code_at(59 / STEP_SECONDS), "287082");
        assert_eq!(s.code_at(1_111_111_109 / STEP_SECONDS), "081804");
        assert_eq!(s.code_at(1_234_567_890 / STEP_SECONDS), "005924");
        assert_eq!(s.code_at(2_000_000_000 / STEP_SECONDS), "279037");
    }

    #[test]
    fn one_step_of_skew_either_way_is_accepted_two_are_not() {
        let s = rfc_secret();
        let now = at(1_111_111_109);
        let step = step_at(now);
        assert_eq!(s.verify(&s.code_at(step), now), Some(step));
        assert_eq!(s.verify(&s.code_at(step - 1), now), Some(step - 1));
        assert_eq!(s.verify(&s.code_at(step + 1), now), Some(step + 1));
        for far in [step - 2, step + 2, step - 3, step + 3] {
            let code = s.code_at(far);
            // (A far code equal to a near one would be accepted as the
            // near one; check that is not what happens here.)
            assert!((step - 1..=step + 1).all(|n| s.code_at(n) != code));
            assert_eq!(s.verify(&code, now), None, "step {far}");
        }
        assert_eq!(s.verify("", now), None);
        assert_eq!(s.verify("12345", now), None);
        assert_eq!(s.verify(&format!("{}0", s.code_at(step)), now), None);
    }

    #[test]
    fn generated_secrets_are_160_bits_and_round_trip() {
        let a = TotpSecret::generate();
        let b = TotpSecret::generate();
        assert_ne!(a.base32(), b.base32());
        assert_eq!(a.base32().len(), 32);
        let again = TotpSecret::from_base32(a.base32()).unwrap();
        assert_eq!(again.code_at(1000), a.code_at(1000));
        assert!(TotpSecret::from_base32("not base32!").is_err());
        assert!(TotpSecret::from_base32("GEZDGNBV").is_err(), "too short");
        assert!(!format!("{a:?}").contains(a.base32()));
    }

    #[test]
    fn the_uri_is_what_authenticator_apps_expect() {
        let s = rfc_secret();
        assert_eq!(
            s.otpauth_uri("alice"),
            "otpauth://totp/pgward:alice?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=pgward"
        );
        let qr = terminal_qr(&s.otpauth_uri("alice")).unwrap();
        assert!(qr.lines().count() > 10);
        assert!(qr.contains('\u{2588}') || qr.contains('\u{2580}'));
    }

    #[test]
    fn recovery_codes_are_unambiguous_distinct_and_forgiving_to_type() {
        let codes = RecoveryCode::generate_set();
        assert_eq!(codes.len(), RECOVERY_CODES);
        let hashes: std::collections::BTreeSet<_> = codes.iter().map(|c| c.hash()).collect();
        assert_eq!(hashes.len(), RECOVERY_CODES);
        for code in &codes {
            let shown = code.display();
            assert_eq!(shown.len(), 14);
            assert!(!shown.contains(['i', 'l', 'o', 'u']));
            assert_eq!(RecoveryCode::parse(&shown).as_ref(), Some(code));
            assert_eq!(
                RecoveryCode::parse(&shown.to_uppercase().replace('-', " ")).as_ref(),
                Some(code)
            );
            assert_eq!(code.hash().len(), 64);
        }
        let c = RecoveryCode::parse("0011-abcd-efgh").unwrap();
        assert_eq!(RecoveryCode::parse("OoIl-ABCD-EFGH"), Some(c));
        assert_eq!(RecoveryCode::parse("abcd-efgh-jkm"), None, "too short");
        assert_eq!(
            RecoveryCode::parse("abcd-efgh-jkmu"),
            None,
            "not in the alphabet"
        );
        assert!(!format!("{:?}", codes[0]).contains(&codes[0].display()));
    }

    #[test]
    fn the_code_is_split_off_at_the_last_colon_only_when_it_looks_like_one() {
        assert_eq!(
            split_code("pw:123456"),
            ("pw", Some(Code::Totp("123456".into())))
        );
        assert_eq!(
            split_code("a:b:c:123456"),
            ("a:b:c", Some(Code::Totp("123456".into())))
        );
        assert_eq!(
            split_code("pw: 12345 "),
            ("pw", Some(Code::Totp("12345".into()))),
            "a short code is a wrong code"
        );
        let (pw, code) = split_code("pw:abcd-efgh-jkmn");
        assert_eq!(pw, "pw");
        assert_eq!(
            code,
            Some(Code::Recovery(RecoveryCode::parse("abcdefghjkmn").unwrap()))
        );
        assert_eq!(split_code("no code here"), ("no code here", None));
        assert_eq!(split_code("p:ss:word"), ("p:ss:word", None));
        assert_eq!(split_code("pw:"), ("pw:", None));
        assert_eq!(split_code("pw:12345678901"), ("pw:12345678901", None));
    }
}
