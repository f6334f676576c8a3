//! Exact Kubernetes resource quantities (`500m`, `2`, `1.5Gi`, `6e9`) in integer milli-units.
//!
//! Integer arithmetic only: limits decide OOM kills and scheduling, so a float rounding
//! that turns `6G` into 5999999999 bytes would be a real bug.

use crate::error::{Error, Result};

/// A quantity in thousandths of its unit (millicores for cpu, millibytes for memory),
/// rounded up like the apiserver rounds sub-milli values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Milli(pub i128);

impl Milli {
    /// The value in whole units, rounded up (memory in bytes, cpu in cores).
    pub fn ceil_units(self) -> i128 {
        let q = self.0.div_euclid(1000);
        if self.0.rem_euclid(1000) == 0 {
            q
        } else {
            q + 1
        }
    }
}

fn invalid(value: &str, reason: &'static str) -> Error {
    Error::Quantity {
        value: value.to_string(),
        reason,
    }
}

/// Parses a Kubernetes quantity string into milli-units (rounded up).
pub fn parse(value: &str) -> Result<Milli> {
    let s = value.trim();
    if s.is_empty() {
        return Err(invalid(value, "empty"));
    }
    let (negative, s) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return Err(invalid(value, "no number"));
    }
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    // value = digits * 10^(exp10) * 2^(exp2)
    let digits: String = format!("{int_part}{frac_part}");
    let digits: i128 = digits
        .trim_start_matches('0')
        .parse::<i128>()
        .or_else(|e| {
            if digits.chars().all(|c| c == '0') {
                Ok(0)
            } else {
                Err(e)
            }
        })
        .map_err(|_| invalid(value, "number too large"))?;
    let frac_len = i32::try_from(frac_part.len()).map_err(|_| invalid(value, "too many digits"))?;
    let (mut exp10, exp2): (i32, u32) = match suffix {
        "" => (0, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        other if other.starts_with(['e', 'E']) => {
            let e: i32 = other[1..]
                .parse()
                .map_err(|_| invalid(value, "bad exponent"))?;
            if !(-30..=30).contains(&e) {
                return Err(invalid(value, "exponent out of range"));
            }
            (e, 0)
        }
        _ => return Err(invalid(value, "unknown suffix")),
    };
    exp10 = exp10 - frac_len + 3; // to milli-units
    let scaled = digits
        .checked_mul(1i128 << exp2)
        .ok_or_else(|| invalid(value, "number too large"))?;
    let milli = if exp10 >= 0 {
        10i128
            .checked_pow(exp10.unsigned_abs())
            .and_then(|p| scaled.checked_mul(p))
            .ok_or_else(|| invalid(value, "number too large"))?
    } else {
        let div = 10i128
            .checked_pow(exp10.unsigned_abs())
            .ok_or_else(|| invalid(value, "too many digits"))?;
        // Round up: the apiserver never rounds a request or limit down.
        scaled / div + i128::from(scaled % div != 0)
    };
    Ok(Milli(if negative { -milli } else { milli }))
}

/// Parses a memory-like quantity into whole bytes (rounded up).
pub fn parse_bytes(value: &str) -> Result<i128> {
    Ok(parse(value)?.ceil_units())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::plain_integer("2", 2000)]
    #[case::millicores("500m", 500)]
    #[case::decimal_cores("1.5", 1500)]
    #[case::decimal_si_giga("1.5G", 1_500_000_000_000)]
    #[case::binary_gibi("6Gi", 6 * (1i128 << 30) * 1000)]
    #[case::si_giga_is_not_binary("6G", 6_000_000_000_000)]
    #[case::exponent("6e9", 6_000_000_000_000)]
    #[case::kilo_lowercase("100k", 100_000_000)]
    #[case::mebi("128Mi", 128 * 1024 * 1024 * 1000)]
    #[case::sub_milli_rounds_up("0.0001", 1)]
    #[case::zero("0", 0)]
    #[case::leading_zeros("007", 7000)]
    #[case::negative("-1", -1000)]
    fn parses_exactly(#[case] input: &str, #[case] milli: i128) {
        assert_eq!(parse(input).unwrap(), Milli(milli));
    }

    #[rstest]
    #[case::empty("")]
    #[case::dask_style_gb_suffix("6GB")]
    #[case::no_number("Gi")]
    #[case::two_dots("1.2.3")]
    #[case::garbage("abc")]
    #[case::huge_exponent("1e99")]
    fn rejects_invalid(#[case] input: &str) {
        assert!(parse(input).is_err(), "{input} should be rejected");
    }

    #[rstest]
    #[case::half_byte_rounds_up("500m", 1)]
    #[case::gibibyte("1Gi", 1 << 30)]
    #[case::exact_giga("6G", 6_000_000_000)]
    fn bytes_round_up(#[case] input: &str, #[case] bytes: i128) {
        assert_eq!(parse_bytes(input).unwrap(), bytes);
    }
}
