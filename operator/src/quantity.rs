//! Kubernetes resource quantities (`10Gi`, `500m`, `1e3`): parsing, comparison and the
//! canonical form the API server stores.
//!
//! The server parses every quantity it receives and writes it back in canonical form (the
//! largest suffix that keeps the number an integer, in the same family of suffixes):
//! `1024Mi` is stored as `1Gi`, `1000m` as `1`, `0.5` as `500m`, `2000` as `2k`. An operator
//! that sends the written form would see a difference on every pass; it sends
//! [`canonical`] instead. Exact arithmetic throughout (no floating point), like the server's.

use std::cmp::Ordering;

/// The suffix family a quantity was written in; the canonical form keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// `Ki`, `Mi`, ... (powers of 1024).
    BinarySI,
    /// `n`, `u`, `m`, none, `k`, `M`, ... (powers of 1000).
    DecimalSI,
    /// `e<n>` / `E<n>`.
    DecimalExponent,
}

/// A parsed quantity: `mantissa * 10^exp10 * 1024^exp1024`, with a sign. Equality and
/// order compare values, not spellings.
#[derive(Clone, Copy, Debug)]
pub struct Quantity {
    negative: bool,
    mantissa: u128,
    exp10: i32,
    exp1024: u32,
    format: Format,
}

/// Mantissas past this are refused (the server caps quantities at 2^63 - 1 anyway).
const MAX_DIGITS: usize = 30;

impl Quantity {
    /// Parses `text` as the API server does; `None` when it is not a quantity.
    pub fn parse(text: &str) -> Option<Quantity> {
        let text = text.trim();
        let (negative, rest) = match text.as_bytes().first()? {
            b'-' => (true, &text[1..]),
            b'+' => (false, &text[1..]),
            _ => (false, text),
        };
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, suffix) = rest.split_at(number_end);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
            return None;
        }
        let digits = format!("{whole}{fraction}");
        let digits = digits.trim_start_matches('0');
        if digits.len() > MAX_DIGITS {
            return None;
        }
        let mantissa: u128 = if digits.is_empty() {
            0
        } else {
            digits.parse().ok()?
        };
        let mut exp10 = -(fraction.len() as i32);
        let (format, exp1024) = match suffix {
            "Ki" => (Format::BinarySI, 1),
            "Mi" => (Format::BinarySI, 2),
            "Gi" => (Format::BinarySI, 3),
            "Ti" => (Format::BinarySI, 4),
            "Pi" => (Format::BinarySI, 5),
            "Ei" => (Format::BinarySI, 6),
            _ => {
                let (format, shift) = match suffix {
                    "n" => (Format::DecimalSI, -9),
                    "u" => (Format::DecimalSI, -6),
                    "m" => (Format::DecimalSI, -3),
                    "" => (Format::DecimalSI, 0),
                    "k" => (Format::DecimalSI, 3),
                    "M" => (Format::DecimalSI, 6),
                    "G" => (Format::DecimalSI, 9),
                    "T" => (Format::DecimalSI, 12),
                    "P" => (Format::DecimalSI, 15),
                    "E" => (Format::DecimalSI, 18),
                    exponent => {
                        let exponent = exponent
                            .strip_prefix('e')
                            .or_else(|| exponent.strip_prefix('E'))?;
                        let value: i32 = exponent.parse().ok()?;
                        if !(-100..=100).contains(&value) {
                            return None;
                        }
                        (Format::DecimalExponent, value)
                    }
                };
                exp10 += shift;
                (format, 0)
            }
        };
        Some(Quantity {
            negative: negative && mantissa != 0,
            mantissa,
            exp10,
            exp1024,
            format,
        })
    }

    /// The value in units of 10^-9, rounded up (the server's smallest unit is `1n`);
    /// `None` past what fits.
    pub fn nanos(&self) -> Option<i128> {
        let mut value = self.mantissa;
        for _ in 0..self.exp1024 {
            value = value.checked_mul(1024)?;
        }
        let shift = self.exp10 + 9;
        if shift >= 0 {
            value = value.checked_mul(10u128.checked_pow(shift as u32)?)?;
        } else {
            let divisor = 10u128.checked_pow(shift.unsigned_abs())?;
            value = value.div_ceil(divisor);
        }
        let value = i128::try_from(value).ok()?;
        Some(if self.negative { -value } else { value })
    }

    /// The canonical spelling, as the API server stores it.
    pub fn canonical(&self) -> Option<String> {
        let sign = if self.negative { "-" } else { "" };
        if self.mantissa == 0 {
            return Some("0".to_string());
        }
        if self.format == Format::BinarySI {
            if let Some(bytes) = self.whole_binary() {
                let mut power = 0;
                let mut value = bytes;
                while power < 6 && value.is_multiple_of(1024) {
                    value /= 1024;
                    power += 1;
                }
                let suffix = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][power];
                return Some(format!("{sign}{value}{suffix}"));
            }
            // Under 1024, or a fraction of a byte: the server writes it in decimal.
            let nanos = self.nanos()?.unsigned_abs();
            return decimal(sign, nanos, -9, Format::DecimalSI);
        }
        decimal(sign, self.mantissa, self.exp10, self.format)
    }

    /// The value as whole bytes when it is one and at least 1024.
    fn whole_binary(&self) -> Option<u128> {
        let nanos = self.nanos()?.unsigned_abs();
        let whole = nanos / 1_000_000_000;
        (nanos % 1_000_000_000 == 0 && whole >= 1024).then_some(whole)
    }
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.partial_cmp(other) == Some(Ordering::Equal)
    }
}

impl PartialOrd for Quantity {
    /// Compares values (not spellings): `1Gi == 1024Mi`, `1 == 1000m`. `None` only when a
    /// value is too large to compare exactly.
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.nanos()?.cmp(&other.nanos()?))
    }
}

/// `mantissa * 10^exp10` with the largest exponent that is a multiple of 3 and keeps the
/// mantissa whole (between `n` and `E` for suffixes).
fn decimal(sign: &str, mut mantissa: u128, mut exp10: i32, format: Format) -> Option<String> {
    while mantissa != 0 && mantissa.is_multiple_of(10) {
        mantissa /= 10;
        exp10 += 1;
    }
    let mut exponent = exp10.div_euclid(3) * 3;
    if format == Format::DecimalSI {
        if exponent < -9 {
            // Below a nano: rounded up to whole nanos, as the server does.
            let divisor = 10u128.checked_pow((-9 - exp10) as u32)?;
            mantissa = mantissa.div_ceil(divisor);
            exp10 = -9;
            exponent = -9;
        }
        exponent = exponent.min(18);
    }
    let mantissa = mantissa.checked_mul(10u128.checked_pow((exp10 - exponent) as u32)?)?;
    let suffix = match format {
        Format::DecimalExponent if exponent == 0 => String::new(),
        Format::DecimalExponent => format!("e{exponent}"),
        _ => match exponent {
            -9 => "n",
            -6 => "u",
            -3 => "m",
            0 => "",
            3 => "k",
            6 => "M",
            9 => "G",
            12 => "T",
            15 => "P",
            _ => "E",
        }
        .to_string(),
    };
    Some(format!("{sign}{mantissa}{suffix}"))
}

/// The canonical spelling of `text`, or `text` itself when it does not parse (the server
/// refuses it; the operator's validation says why first).
pub fn canonical(text: &str) -> String {
    Quantity::parse(text)
        .and_then(|q| q.canonical())
        .unwrap_or_else(|| text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms_match_the_api_servers() {
        // Pairs as `kubectl` shows them after a round trip through the API server
        // (apimachinery's resource.Quantity).
        for (written, stored) in [
            ("1024Mi", "1Gi"),
            ("1.5Gi", "1536Mi"),
            ("0.5Gi", "512Mi"),
            ("100Mi", "100Mi"),
            ("1536", "1536"),
            ("1.5Ki", "1536"),
            ("1000m", "1"),
            ("1500m", "1500m"),
            ("0.5", "500m"),
            ("1.5", "1500m"),
            ("1000", "1k"),
            ("2000", "2k"),
            ("1500", "1500"),
            ("250m", "250m"),
            ("0.1m", "100u"),
            ("1e3", "1e3"),
            ("1.5e3", "1500"),
            ("12e6", "12e6"),
            ("10Gi", "10Gi"),
            ("0", "0"),
            ("0Gi", "0"),
            ("-1000m", "-1"),
            ("+2k", "2k"),
            ("1E", "1E"),
            ("1000E", "1000E"),
            ("1024", "1024"),
            ("1024Ki", "1Mi"),
            ("512Ki", "512Ki"),
            ("0.0000000001", "1n"),
        ] {
            assert_eq!(canonical(written), stored, "{written}");
        }
    }

    #[test]
    fn canonical_forms_are_fixed_points() {
        for text in ["1Gi", "1536Mi", "500m", "1k", "2e3", "100u", "7", "1n"] {
            assert_eq!(canonical(&canonical(text)), canonical(text), "{text}");
        }
    }

    #[test]
    fn values_compare_across_suffixes() {
        let q = |s| Quantity::parse(s).unwrap();
        assert_eq!(q("1Gi").partial_cmp(&q("1024Mi")), Some(Ordering::Equal));
        assert!(q("20Gi") > q("10Gi"));
        assert!(q("10G") < q("10Gi"));
        assert!(q("1") == q("1000m"));
        assert!(q("1.5e3") == q("1500"));
        assert!(q("-1") < q("0"));
    }

    #[test]
    fn malformed_text_is_not_a_quantity() {
        for text in [
            "", "Gi", "1.2.3", "10GB", "1e", "abc", "--1", "1 Gi", "1e400",
        ] {
            assert!(Quantity::parse(text).is_none(), "{text}");
        }
        assert_eq!(canonical("10GB"), "10GB");
    }
}
