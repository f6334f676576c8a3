//! Exact conversions between Dask memory strings and Kubernetes quantities.
//!
//! Dask (`dask.utils.parse_bytes`) and Kubernetes (`resource.Quantity`) spell sizes
//! differently: `6GB` in Dask is `6G` in Kubernetes (6e9 bytes), `6GiB` is `6Gi`, and a
//! lowercase `m` means megabytes to Dask but *milli* to Kubernetes. Unit confusion between
//! the two is a classic cause of OOM-killed workers, so every conversion here is done in
//! integer arithmetic on the decimal digits as written: no float ever rounds a byte away.

use std::fmt;

/// Largest number of significant decimal digits we accept in a size. `u128` holds 38;
/// keeping a margin lets multipliers up to 2^60 (exbibytes) stay exact without overflow.
const MAX_DIGITS: usize = 19;

/// Why a string is not a size we can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// The text does not follow the grammar at all.
    #[error("{value:?} is not a number with an optional unit")]
    Syntax {
        /// The text as written.
        value: String,
    },
    /// The number is fine but the unit is unknown.
    #[error("{value:?} has an unknown unit {unit:?} (expected one of {expected})")]
    UnknownUnit {
        /// The text as written.
        value: String,
        /// The unit part.
        unit: String,
        /// The units that are understood.
        expected: &'static str,
    },
    /// Memory sizes must be whole bytes (`500m` is half a byte in Kubernetes).
    #[error("{value:?} is not a whole number of bytes")]
    FractionalBytes {
        /// The text as written.
        value: String,
    },
    /// CPU quantities are counted in millicores; finer precision cannot be honoured.
    #[error("{value:?} is finer than 1m (one millicore)")]
    FractionalMillicores {
        /// The text as written.
        value: String,
    },
    /// A negative size makes no sense for memory or CPU.
    #[error("{value:?} is negative")]
    Negative {
        /// The text as written.
        value: String,
    },
    /// Too many digits or too large an exponent to represent exactly.
    #[error("{value:?} is too large")]
    TooLarge {
        /// The text as written.
        value: String,
    },
}

/// A decimal number exactly as written: `digits * 10^exponent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Decimal {
    negative: bool,
    digits: u128,
    exponent: i32,
}

impl Decimal {
    /// Parses `[+-]digits[.digits]` with an optional `e[+-]digits` exponent when
    /// `allow_exponent` is set. Underscores are not accepted: neither side documents them.
    fn parse(text: &str, allow_exponent: bool) -> Option<Decimal> {
        let bytes = text.as_bytes();
        let mut pos = 0;
        let mut negative = false;
        if let Some(&sign) = bytes.first()
            && (sign == b'+' || sign == b'-')
        {
            negative = sign == b'-';
            pos = 1;
        }
        let mut digits: u128 = 0;
        let mut significant = 0usize;
        let mut seen_digit = false;
        let mut seen_dot = false;
        let mut exponent: i32 = 0;
        while let Some(&b) = bytes.get(pos) {
            match b {
                b'0'..=b'9' => {
                    seen_digit = true;
                    if digits != 0 || b != b'0' {
                        significant += 1;
                    }
                    if significant > MAX_DIGITS {
                        // Keep exactness honest: refuse rather than truncate.
                        return None;
                    }
                    digits = digits * 10 + u128::from(b - b'0');
                    if seen_dot {
                        exponent -= 1;
                    }
                }
                b'.' if !seen_dot => seen_dot = true,
                _ => break,
            }
            pos += 1;
        }
        if !seen_digit {
            return None;
        }
        if pos < bytes.len() {
            if !allow_exponent {
                return None;
            }
            let (first, rest) = (bytes.get(pos)?, text.get(pos + 1..)?);
            if *first != b'e' && *first != b'E' {
                return None;
            }
            let exp: i32 = parse_small_int(rest)?;
            exponent = exponent.checked_add(exp)?;
        }
        Some(Decimal {
            negative,
            digits,
            exponent,
        })
    }

    /// `self * multiplier / divisor` if that is a whole number, `Err(true)` if it is
    /// not whole, `Err(false)` on overflow.
    fn scaled_exact(self, multiplier: u128, divisor: u128) -> Result<u128, bool> {
        let mut numerator = self.digits.checked_mul(multiplier).ok_or(false)?;
        let mut denominator = divisor;
        if self.exponent >= 0 {
            let pow = pow10(self.exponent.unsigned_abs()).ok_or(false)?;
            numerator = numerator.checked_mul(pow).ok_or(false)?;
        } else {
            let pow = pow10(self.exponent.unsigned_abs()).ok_or(false)?;
            denominator = denominator.checked_mul(pow).ok_or(false)?;
        }
        if denominator == 0 {
            return Err(false);
        }
        if numerator % denominator == 0 {
            Ok(numerator / denominator)
        } else {
            Err(true)
        }
    }

    /// `floor(self * multiplier)`, for Dask which truncates with `int(...)`.
    fn scaled_floor(self, multiplier: u128) -> Option<u128> {
        let numerator = self.digits.checked_mul(multiplier)?;
        if self.exponent >= 0 {
            numerator.checked_mul(pow10(self.exponent.unsigned_abs())?)
        } else {
            Some(numerator / pow10(self.exponent.unsigned_abs())?)
        }
    }

    fn is_zero(self) -> bool {
        self.digits == 0
    }

    /// Whether the value is at most one (Dask reads such a `--memory-limit` as a fraction).
    fn at_most_one(self) -> bool {
        if self.negative || self.digits == 0 {
            return true;
        }
        // digits * 10^exponent <= 1
        match self.scaled_exact(1, 1) {
            Ok(v) => v <= 1,
            // Non-integer: compare digits with 10^-exponent.
            Err(true) => match pow10(self.exponent.unsigned_abs()) {
                Some(p) => self.digits <= p,
                None => true,
            },
            Err(false) => false,
        }
    }
}

fn parse_small_int(text: &str) -> Option<i32> {
    if text.is_empty() || text.len() > 4 {
        return None;
    }
    let (negative, body) = match text.as_bytes().first()? {
        b'-' => (true, text.get(1..)?),
        b'+' => (false, text.get(1..)?),
        _ => (false, text),
    };
    if body.is_empty() || !body.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: i32 = body.parse().ok()?;
    Some(if negative { -value } else { value })
}

fn pow10(exp: u32) -> Option<u128> {
    10u128.checked_pow(exp)
}

/// What a worker's `--memory-limit` means, following `distributed`'s
/// `parse_memory_limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryLimit {
    /// An exact number of bytes per worker process.
    Bytes(u64),
    /// `auto`: a cgroup-aware share of the machine's memory, decided at runtime.
    Auto,
    /// A number `<= 1`: that fraction of the machine's memory, decided at runtime.
    Fraction(String),
    /// `0`: memory management disabled.
    Disabled,
}

impl MemoryLimit {
    /// Parses a `--memory-limit` value the way `distributed` does: `auto`; a plain
    /// number `<= 1` is a fraction and `0` disables; otherwise `parse_bytes`
    /// (`6GB`, `6G`, `6GiB`, `1.5 gb`, `6e9`), truncated to whole bytes like Dask's `int()`.
    ///
    /// # Example
    /// ```
    /// use dask_worker_spec::MemoryLimit;
    /// assert_eq!(MemoryLimit::parse("6GB"), Ok(MemoryLimit::Bytes(6_000_000_000)));
    /// assert_eq!(MemoryLimit::parse("2GiB"), Ok(MemoryLimit::Bytes(2 << 30)));
    /// assert_eq!(MemoryLimit::parse("auto"), Ok(MemoryLimit::Auto));
    /// ```
    pub fn parse(value: &str) -> Result<Self, QuantityError> {
        let trimmed = value.trim();
        if trimmed == "auto" {
            return Ok(MemoryLimit::Auto);
        }
        // `float(memory_limit)` succeeds: a bare number (with optional exponent).
        if let Some(number) = Decimal::parse(trimmed, true) {
            if number.negative && !number.is_zero() {
                return Err(QuantityError::Negative {
                    value: value.to_owned(),
                });
            }
            if number.is_zero() {
                return Ok(MemoryLimit::Disabled);
            }
            if number.at_most_one() {
                return Ok(MemoryLimit::Fraction(trimmed.to_owned()));
            }
            let bytes = number
                .scaled_floor(1)
                .ok_or_else(|| QuantityError::TooLarge {
                    value: value.to_owned(),
                })?;
            return to_u64(bytes, value).map(MemoryLimit::Bytes);
        }
        let bytes = parse_dask_bytes(value)?;
        if bytes == 0 {
            Ok(MemoryLimit::Disabled)
        } else {
            Ok(MemoryLimit::Bytes(bytes))
        }
    }

    /// The byte count, if this limit has one.
    pub fn bytes(&self) -> Option<u64> {
        match self {
            MemoryLimit::Bytes(b) => Some(*b),
            _ => None,
        }
    }
}

impl fmt::Display for MemoryLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemoryLimit::Bytes(b) => f.write_str(&format_dask_bytes(*b)),
            MemoryLimit::Auto => f.write_str("auto"),
            MemoryLimit::Fraction(v) => f.write_str(v),
            MemoryLimit::Disabled => f.write_str("0"),
        }
    }
}

const DASK_UNITS: &str =
    "B, kB, MB, GB, TB, PB, KiB, MiB, GiB, TiB, PiB (case-insensitive, B optional)";

/// Multiplier of a Dask byte unit, matched case-insensitively as `dask.utils.byte_sizes`.
fn dask_unit(unit: &str) -> Option<u128> {
    let lower = unit.to_ascii_lowercase();
    let m = match lower.as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1_000,
        "mb" | "m" => 1_000_000,
        "gb" | "g" => 1_000_000_000,
        "tb" | "t" => 1_000_000_000_000,
        "pb" | "p" => 1_000_000_000_000_000,
        "kib" | "ki" => 1 << 10,
        "mib" | "mi" => 1 << 20,
        "gib" | "gi" => 1 << 30,
        "tib" | "ti" => 1 << 40,
        "pib" | "pi" => 1 << 50,
        _ => return None,
    };
    Some(m)
}

/// `dask.utils.parse_bytes`, exactly: spaces removed, a trailing alphabetic unit, a
/// number before it (a unit alone means one of it), fractional bytes truncated.
///
/// # Example
/// ```
/// use dask_worker_spec::parse_dask_bytes;
/// assert_eq!(parse_dask_bytes("6GB"), Ok(6_000_000_000));
/// assert_eq!(parse_dask_bytes("1.5 GiB"), Ok(1_610_612_736));
/// assert_eq!(parse_dask_bytes("500m"), Ok(500_000_000)); // m is MB to Dask
/// ```
pub fn parse_dask_bytes(value: &str) -> Result<u64, QuantityError> {
    let compact: String = value.chars().filter(|c| *c != ' ').collect();
    let unit_start = compact
        .char_indices()
        .rev()
        .take_while(|(_, c)| c.is_ascii_alphabetic())
        .last()
        .map_or(compact.len(), |(i, _)| i);
    let (number, unit) = compact.split_at(unit_start);
    let multiplier = dask_unit(unit).ok_or_else(|| QuantityError::UnknownUnit {
        value: value.to_owned(),
        unit: unit.to_owned(),
        expected: DASK_UNITS,
    })?;
    let number = if number.is_empty() && !unit.is_empty() {
        Decimal {
            negative: false,
            digits: 1,
            exponent: 0,
        }
    } else {
        Decimal::parse(number, true).ok_or_else(|| QuantityError::Syntax {
            value: value.to_owned(),
        })?
    };
    if number.negative && !number.is_zero() {
        return Err(QuantityError::Negative {
            value: value.to_owned(),
        });
    }
    let bytes = number
        .scaled_floor(multiplier)
        .ok_or_else(|| QuantityError::TooLarge {
            value: value.to_owned(),
        })?;
    to_u64(bytes, value)
}

fn to_u64(value: u128, text: &str) -> Result<u64, QuantityError> {
    u64::try_from(value).map_err(|_| QuantityError::TooLarge {
        value: text.to_owned(),
    })
}

const K8S_UNITS: &str = "Ki, Mi, Gi, Ti, Pi, Ei, n, u, m, k, M, G, T, P, E or an exponent like e9";

/// Splits a Kubernetes quantity into its number and `(multiplier, divisor)`.
fn k8s_parts(value: &str) -> Result<(Decimal, u128, u128), QuantityError> {
    let text = value.trim();
    let number_end = text
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_digit() || *c == '.' || ((*c == '+' || *c == '-') && *i == 0)))
        .map_or(text.len(), |(i, _)| i);
    let (number, suffix) = text.split_at(number_end);
    let syntax = || QuantityError::Syntax {
        value: value.to_owned(),
    };
    if number.is_empty() {
        return Err(syntax());
    }
    let (multiplier, divisor): (u128, u128) = match suffix {
        "" => (1, 1),
        "n" => (1, 1_000_000_000),
        "u" => (1, 1_000_000),
        "m" => (1, 1_000),
        "k" => (1_000, 1),
        "M" => (1_000_000, 1),
        "G" => (1_000_000_000, 1),
        "T" => (1_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000, 1),
        "E" => (1_000_000_000_000_000_000, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "Ei" => (1 << 60, 1),
        s if s.starts_with(['e', 'E']) => {
            // Decimal exponent: parse the whole text as one decimal.
            let decimal = Decimal::parse(text, true).ok_or_else(syntax)?;
            return Ok((decimal, 1, 1));
        }
        s => {
            return Err(QuantityError::UnknownUnit {
                value: value.to_owned(),
                unit: s.to_owned(),
                expected: K8S_UNITS,
            });
        }
    };
    let decimal = Decimal::parse(number, false).ok_or_else(syntax)?;
    Ok((decimal, multiplier, divisor))
}

/// Parses a Kubernetes memory quantity (`6G`, `6Gi`, `6e9`, `6000M`) to bytes.
///
/// Fractions of a byte (`500m`, `0.5`) are refused rather than rounded: such a value is
/// almost always a unit mistake and would silently change the limit.
///
/// # Example
/// ```
/// use dask_worker_spec::parse_k8s_memory;
/// assert_eq!(parse_k8s_memory("6G"), Ok(6_000_000_000));
/// assert_eq!(parse_k8s_memory("1.5Gi"), Ok(1_610_612_736));
/// assert!(parse_k8s_memory("500m").is_err());
/// ```
pub fn parse_k8s_memory(value: &str) -> Result<u64, QuantityError> {
    let (decimal, multiplier, divisor) = k8s_parts(value)?;
    if decimal.negative && !decimal.is_zero() {
        return Err(QuantityError::Negative {
            value: value.to_owned(),
        });
    }
    match decimal.scaled_exact(multiplier, divisor) {
        Ok(bytes) => to_u64(bytes, value),
        Err(true) => Err(QuantityError::FractionalBytes {
            value: value.to_owned(),
        }),
        Err(false) => Err(QuantityError::TooLarge {
            value: value.to_owned(),
        }),
    }
}

/// Parses a Kubernetes CPU quantity (`2`, `1.5`, `500m`) to millicores.
///
/// # Example
/// ```
/// use dask_worker_spec::parse_k8s_cpu_millis;
/// assert_eq!(parse_k8s_cpu_millis("1.5"), Ok(1_500));
/// assert_eq!(parse_k8s_cpu_millis("500m"), Ok(500));
/// ```
pub fn parse_k8s_cpu_millis(value: &str) -> Result<u64, QuantityError> {
    let (decimal, multiplier, divisor) = k8s_parts(value)?;
    if decimal.negative && !decimal.is_zero() {
        return Err(QuantityError::Negative {
            value: value.to_owned(),
        });
    }
    match decimal.scaled_exact(multiplier.saturating_mul(1_000), divisor) {
        Ok(millis) => to_u64(millis, value),
        Err(true) => Err(QuantityError::FractionalMillicores {
            value: value.to_owned(),
        }),
        Err(false) => Err(QuantityError::TooLarge {
            value: value.to_owned(),
        }),
    }
}

/// Writes `bytes` with the shortest exact unit, decimal before binary on a tie, so a
/// size written by a user as `6GB` comes back as `6G` and `6GiB` as `6Gi`.
fn format_with_units(
    bytes: u64,
    decimal: &[(&str, u64)],
    binary: &[(&str, u64)],
    bare: &str,
) -> String {
    let mut best = format!("{bytes}{bare}");
    if bytes == 0 {
        return best;
    }
    for (unit, size) in decimal.iter().chain(binary.iter()) {
        if bytes.is_multiple_of(*size) {
            let candidate = format!("{}{unit}", bytes / size);
            if candidate.len() < best.len() {
                best = candidate;
            }
        }
    }
    best
}

const K8S_DECIMAL: [(&str, u64); 6] = [
    ("k", 1_000),
    ("M", 1_000_000),
    ("G", 1_000_000_000),
    ("T", 1_000_000_000_000),
    ("P", 1_000_000_000_000_000),
    ("E", 1_000_000_000_000_000_000),
];
const K8S_BINARY: [(&str, u64); 6] = [
    ("Ki", 1 << 10),
    ("Mi", 1 << 20),
    ("Gi", 1 << 30),
    ("Ti", 1 << 40),
    ("Pi", 1 << 50),
    ("Ei", 1 << 60),
];
const DASK_DECIMAL: [(&str, u64); 5] = [
    ("kB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
    ("PB", 1_000_000_000_000_000),
];
const DASK_BINARY: [(&str, u64); 5] = [
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
    ("PiB", 1 << 50),
];

/// Formats a byte count as a Kubernetes memory quantity (`6G`, `6Gi`, or plain bytes).
///
/// # Example
/// ```
/// use dask_worker_spec::format_k8s_memory;
/// assert_eq!(format_k8s_memory(6_000_000_000), "6G");
/// assert_eq!(format_k8s_memory(6 << 30), "6Gi");
/// assert_eq!(format_k8s_memory(1_500_000_001), "1500000001");
/// ```
pub fn format_k8s_memory(bytes: u64) -> String {
    format_with_units(bytes, &K8S_DECIMAL, &K8S_BINARY, "")
}

/// Formats a byte count as a Dask memory string (`6GB`, `6GiB`, or plain bytes), which
/// `parse_dask_bytes` reads back to the same count.
///
/// # Example
/// ```
/// use dask_worker_spec::format_dask_bytes;
/// assert_eq!(format_dask_bytes(6_000_000_000), "6GB");
/// assert_eq!(format_dask_bytes(3 << 30), "3GiB");
/// ```
pub fn format_dask_bytes(bytes: u64) -> String {
    // A bare `1` (or `0`) would be read back by Dask as a fraction of memory.
    let bare = if bytes <= 1 { "B" } else { "" };
    format_with_units(bytes, &DASK_DECIMAL, &DASK_BINARY, bare)
}

/// Formats millicores as a Kubernetes CPU quantity (`2`, `1500m`).
pub fn format_k8s_cpu(millis: u64) -> String {
    if millis.is_multiple_of(1_000) {
        (millis / 1_000).to_string()
    } else {
        format!("{millis}m")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::decimal_gb("6GB", 6_000_000_000)]
    #[case::decimal_g_short("6G", 6_000_000_000)]
    #[case::lowercase_gb("6gb", 6_000_000_000)]
    #[case::binary_gib("6GiB", 6 * (1 << 30))]
    #[case::binary_gi_short("6Gi", 6 * (1 << 30))]
    #[case::mixed_case_gib("2gIb", 2 * (1 << 30))]
    #[case::fractional_gb("1.5GB", 1_500_000_000)]
    #[case::fractional_gib("1.5GiB", 1_610_612_736)]
    #[case::spaces_removed("4 GB", 4_000_000_000)]
    #[case::lower_m_is_megabytes("500m", 500_000_000)]
    #[case::kilobyte("100kB", 100_000)]
    #[case::kibibyte("100KiB", 102_400)]
    #[case::bare_bytes("123456", 123_456)]
    #[case::b_suffix("512B", 512)]
    #[case::unit_alone_means_one("GB", 1_000_000_000)]
    #[case::exponent_prefix("1e3MB", 1_000_000_000)]
    #[case::fraction_truncated_like_int("1.0000000005GB", 1_000_000_000)]
    #[case::petabyte("1PB", 1_000_000_000_000_000)]
    fn dask_bytes_parse_exactly(#[case] text: &str, #[case] bytes: u64) {
        assert_eq!(parse_dask_bytes(text), Ok(bytes));
    }

    #[rstest]
    #[case::unknown_unit("6XB")]
    #[case::no_number_and_bad_unit("lots")]
    #[case::two_dots("1.2.3GB")]
    #[case::negative("-5GB")]
    #[case::too_many_digits("123456789012345678901234567890GB")]
    fn dask_bytes_reject(#[case] text: &str) {
        assert!(parse_dask_bytes(text).is_err(), "{text} should be rejected");
    }

    #[rstest]
    #[case::gb("6GB", MemoryLimit::Bytes(6_000_000_000))]
    #[case::gib("6GiB", MemoryLimit::Bytes(6 << 30))]
    #[case::auto("auto", MemoryLimit::Auto)]
    #[case::fraction_half("0.5", MemoryLimit::Fraction("0.5".into()))]
    #[case::one_is_whole_machine("1", MemoryLimit::Fraction("1".into()))]
    #[case::one_point_zero("1.0", MemoryLimit::Fraction("1.0".into()))]
    #[case::zero_disables("0", MemoryLimit::Disabled)]
    #[case::zero_bytes_disables("0GB", MemoryLimit::Disabled)]
    #[case::bare_bytes_above_one("6000000000", MemoryLimit::Bytes(6_000_000_000))]
    #[case::float_bytes_truncated("2.5", MemoryLimit::Bytes(2))]
    #[case::exponent_bytes("6e9", MemoryLimit::Bytes(6_000_000_000))]
    fn memory_limit_follows_distributed(#[case] text: &str, #[case] expected: MemoryLimit) {
        assert_eq!(MemoryLimit::parse(text), Ok(expected));
    }

    #[rstest]
    #[case::unknown("six gigs")]
    #[case::negative_number("-1")]
    #[case::empty("")]
    fn memory_limit_rejects(#[case] text: &str) {
        assert!(MemoryLimit::parse(text).is_err());
    }

    #[rstest]
    #[case::decimal_g("6G", 6_000_000_000)]
    #[case::binary_gi("6Gi", 6 << 30)]
    #[case::exponent("6e9", 6_000_000_000)]
    #[case::exponent_upper("6E9", 6_000_000_000)]
    #[case::mega("6000M", 6_000_000_000)]
    #[case::fractional_gi("1.5Gi", 1_610_612_736)]
    #[case::plain("128974848", 128_974_848)]
    #[case::kilo("129e6", 129_000_000)]
    #[case::mi("123Mi", 128_974_848)]
    #[case::exa("1E", 1_000_000_000_000_000_000)]
    #[case::milli_whole("1000m", 1)]
    fn k8s_memory_parse_exactly(#[case] text: &str, #[case] bytes: u64) {
        assert_eq!(parse_k8s_memory(text), Ok(bytes));
    }

    #[rstest]
    #[case::half_a_byte("500m", QuantityError::FractionalBytes { value: "500m".into() })]
    #[case::fraction("0.5", QuantityError::FractionalBytes { value: "0.5".into() })]
    #[case::dask_unit_gb("6GB", QuantityError::UnknownUnit { value: "6GB".into(), unit: "GB".into(), expected: K8S_UNITS })]
    #[case::garbage("lots", QuantityError::Syntax { value: "lots".into() })]
    #[case::negative("-1Gi", QuantityError::Negative { value: "-1Gi".into() })]
    fn k8s_memory_rejects(#[case] text: &str, #[case] error: QuantityError) {
        assert_eq!(parse_k8s_memory(text), Err(error));
    }

    #[rstest]
    #[case::whole("2", 2_000)]
    #[case::fraction("1.5", 1_500)]
    #[case::millis("500m", 500)]
    #[case::exponent("2e0", 2_000)]
    #[case::kilo_cpus("1k", 1_000_000)]
    fn k8s_cpu_parse(#[case] text: &str, #[case] millis: u64) {
        assert_eq!(parse_k8s_cpu_millis(text), Ok(millis));
    }

    #[rstest]
    #[case::micro("1u")]
    #[case::sub_milli("0.0001")]
    #[case::garbage("two")]
    fn k8s_cpu_rejects(#[case] text: &str) {
        assert!(parse_k8s_cpu_millis(text).is_err());
    }

    #[rstest]
    #[case::six_g(6_000_000_000, "6G", "6GB")]
    #[case::six_gi(6 << 30, "6Gi", "6GiB")]
    #[case::one_and_half_g(1_500_000_000, "1500M", "1500MB")]
    #[case::thousand_gi(1000 << 30, "1000Gi", "1000GiB")]
    #[case::odd(1_500_000_001, "1500000001", "1500000001")]
    #[case::shortest_wins(1_024_000, "1024k", "1024kB")]
    #[case::one_byte_is_not_a_fraction(1, "1", "1B")]
    fn formatting_is_shortest_exact(#[case] bytes: u64, #[case] k8s: &str, #[case] dask: &str) {
        assert_eq!(format_k8s_memory(bytes), k8s);
        assert_eq!(format_dask_bytes(bytes), dask);
        assert_eq!(parse_k8s_memory(k8s), Ok(bytes));
        assert_eq!(MemoryLimit::parse(dask), Ok(MemoryLimit::Bytes(bytes)));
    }

    proptest::proptest! {
        #[test]
        fn formatting_round_trips(bytes in 1u64..=u64::MAX / 2) {
            proptest::prop_assert_eq!(parse_k8s_memory(&format_k8s_memory(bytes)), Ok(bytes));
            proptest::prop_assert_eq!(MemoryLimit::parse(&format_dask_bytes(bytes)), Ok(MemoryLimit::Bytes(bytes)));
        }

        #[test]
        fn parsers_never_panic(text in "\\PC{0,40}") {
            let _ = parse_k8s_memory(&text);
            let _ = parse_k8s_cpu_millis(&text);
            let _ = parse_dask_bytes(&text);
            let _ = MemoryLimit::parse(&text);
        }
    }
}
