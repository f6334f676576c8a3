//! Exact conversions between Dask memory strings and Kubernetes quantities.
//!
//! Dask (`dask.utils.parse_bytes`) and Kubernetes (`resource.Quantity`) spell sizes
//! differently: `6GB` in Dask is `6G` in Kubernetes (6e9 bytes), `6GiB` is `6Gi`, and a
//! lowercase `m` means megabytes to Dask but *milli* to Kubernetes. Unit confusion between
//! the two is a classic cause of OOM-killed workers, so every conversion here is done in
//! integer arithmetic on the decimal digits as written: no float ever rounds a byte away.

use std::fmt;

/// Largest number of significant decimal digits we accept in a size: every `u64` fits, and
/// `u128` (38 digits) keeps multipliers up to 2^60 (exbibytes) exact without overflow.
const MAX_DIGITS: usize = 20;

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
            // Beyond 10^38 a non-zero value is far below one unit: not whole.
            let pow = pow10(self.exponent.unsigned_abs()).ok_or(self.digits != 0)?;
            denominator = denominator.checked_mul(pow).ok_or(self.digits != 0)?;
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

    /// `ceil(self * multiplier / divisor)` of the magnitude; `None` on overflow.
    fn scaled_ceil(self, multiplier: u128, divisor: u128) -> Option<u128> {
        let mut numerator = self.digits.checked_mul(multiplier)?;
        let mut denominator = divisor;
        let pow = pow10(self.exponent.unsigned_abs());
        if self.exponent >= 0 {
            numerator = numerator.checked_mul(pow?)?;
        } else {
            match pow {
                Some(pow) => denominator = denominator.checked_mul(pow)?,
                // Beyond 10^38 the value is below any milli-unit: it rounds up to one.
                None => return Some(u128::from(self.digits != 0)),
            }
        }
        if denominator == 0 {
            return None;
        }
        Some(numerator.div_ceil(denominator))
    }

    fn is_zero(self) -> bool {
        self.digits == 0
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
    /// Parses a `--memory-limit` value exactly as `distributed.worker_memory.parse_memory_limit`
    /// does: the exact text `auto`; anything Python's `float()` reads is a fraction of the
    /// machine's memory when `<= 1` (`0` disables), else `int()` of it in bytes (`2.5` is 2
    /// bytes); otherwise [`parse_dask_bytes`] (`6GB`, `6G`, `6GiB`, `1.5 gb`).
    ///
    /// Values Dask fails on (`inf`, `nan`) and negative ones (which Dask would turn into a
    /// negative limit) are errors.
    ///
    /// # Example
    /// ```
    /// use dask_worker_spec::MemoryLimit;
    /// assert_eq!(MemoryLimit::parse("6GB"), Ok(MemoryLimit::Bytes(6_000_000_000)));
    /// assert_eq!(MemoryLimit::parse("8.2GB"), Ok(MemoryLimit::Bytes(8_199_999_999)));
    /// assert_eq!(MemoryLimit::parse("2GiB"), Ok(MemoryLimit::Bytes(2 << 30)));
    /// assert_eq!(MemoryLimit::parse("auto"), Ok(MemoryLimit::Auto));
    /// assert_eq!(MemoryLimit::parse("2.5"), Ok(MemoryLimit::Bytes(2)));
    /// ```
    pub fn parse(value: &str) -> Result<Self, QuantityError> {
        if value == "auto" {
            return Ok(MemoryLimit::Auto);
        }
        if let Some(number) = python_float(value) {
            if number.is_nan() || number.is_infinite() {
                // `int(nan)` / `int(inf)` raise in Dask; `-inf` is a negative fraction.
                return Err(if number == f64::NEG_INFINITY {
                    QuantityError::Negative {
                        value: value.to_owned(),
                    }
                } else {
                    QuantityError::TooLarge {
                        value: value.to_owned(),
                    }
                });
            }
            if number <= 1.0 {
                return if number == 0.0 {
                    Ok(MemoryLimit::Disabled)
                } else if number < 0.0 {
                    Err(QuantityError::Negative {
                        value: value.to_owned(),
                    })
                } else {
                    Ok(MemoryLimit::Fraction(value.to_owned()))
                };
            }
            return f64_to_bytes(number.trunc(), value).map(MemoryLimit::Bytes);
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

/// Dask's byte units (`dask.utils.byte_sizes`): every spelling Dask accepts (matched after
/// Python's `str.lower()`), the unit's canonical name, and its size.
const DASK_UNIT_TABLE: [(&[&str], &str, u64); 11] = [
    (&["", "b"], "B", 1),
    (&["kb", "k"], "kB", 1_000),
    (&["mb", "m"], "MB", 1_000_000),
    (&["gb", "g"], "GB", 1_000_000_000),
    (&["tb", "t"], "TB", 1_000_000_000_000),
    (&["pb", "p"], "PB", 1_000_000_000_000_000),
    (&["kib", "ki"], "KiB", 1 << 10),
    (&["mib", "mi"], "MiB", 1 << 20),
    (&["gib", "gi"], "GiB", 1 << 30),
    (&["tib", "ti"], "TiB", 1 << 40),
    (&["pib", "pi"], "PiB", 1 << 50),
];

/// The unit Dask reads from a suffix: Python's `str.lower()`, then `byte_sizes`. Of all
/// non-ASCII characters only the Kelvin sign (U+212A) lowers to an ASCII letter (checked
/// over every code point with Python 3.11), so that is the only one mapped here: any
/// other stays non-ASCII and matches no unit, as in Dask.
fn dask_unit(suffix: &str) -> Option<(&'static str, u64)> {
    let lower: String = suffix
        .chars()
        .map(|c| {
            if c == KELVIN_SIGN {
                'k'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    DASK_UNIT_TABLE
        .iter()
        .find(|(spellings, _, _)| spellings.contains(&lower.as_str()))
        .map(|(_, name, size)| (*name, *size))
}

/// U+212A, which Python's `str.lower()` turns into `k`.
const KELVIN_SIGN: char = '\u{212A}';

/// `dask.utils.parse_bytes` split: spaces removed, `1` prepended when there is no digit at
/// all, the trailing run of letters is the unit and the rest the number.
///
/// Python's `isalpha()` is Unicode-wide; here only ASCII letters and the Kelvin sign count.
/// That gives the same answer on every string Dask accepts: a successful unit consists of
/// those characters only, and any other letter ends up in the unit or in the number,
/// which Dask and this parser then both refuse.
fn split_dask_bytes(value: &str) -> (String, String) {
    let mut compact: String = value.chars().filter(|c| *c != ' ').collect();
    if !compact.chars().any(is_python_decimal) {
        compact.insert(0, '1');
    }
    let unit_start = compact
        .char_indices()
        .rev()
        .take_while(|(_, c)| c.is_ascii_alphabetic() || *c == KELVIN_SIGN)
        .last()
        .map_or(compact.len(), |(i, _)| i);
    let unit = compact.split_off(unit_start);
    (compact, unit)
}

/// `dask.utils.parse_bytes`, exactly: spaces removed, a trailing alphabetic unit, Python's
/// `float()` of the number before it (a unit alone means one of it), and
/// `int(number * unit)`, which truncates the float product: `8.2GB` is 8,199,999,999
/// bytes, because 8.2 is not exactly representable and the product rounds below 8.2e9.
/// The policy must count what the worker counts, so it reproduces the float arithmetic
/// rather than computing the decimal value exactly. Tested against a table Dask generates
/// (`tests/fixtures/dask_bytes/`).
///
/// A negative count (Dask returns it as is) and one beyond `u64` are errors.
///
/// # Example
/// ```
/// use dask_worker_spec::parse_dask_bytes;
/// assert_eq!(parse_dask_bytes("6GB"), Ok(6_000_000_000));
/// assert_eq!(parse_dask_bytes("8.2GB"), Ok(8_199_999_999));
/// assert_eq!(parse_dask_bytes("1.5 GiB"), Ok(1_610_612_736));
/// assert_eq!(parse_dask_bytes("500m"), Ok(500_000_000)); // m is MB to Dask
/// ```
pub fn parse_dask_bytes(value: &str) -> Result<u64, QuantityError> {
    let (number, unit) = split_dask_bytes(value);
    let number = python_float(&number).ok_or_else(|| QuantityError::Syntax {
        value: value.to_owned(),
    })?;
    let (_, multiplier) = dask_unit(&unit).ok_or_else(|| QuantityError::UnknownUnit {
        value: value.to_owned(),
        unit: unit.clone(),
        expected: DASK_UNITS,
    })?;
    // Python: `float * int` converts the int to a float (exact for every unit above), and
    // `int()` truncates towards zero.
    #[allow(clippy::cast_precision_loss)] // units are at most 2^50 and 10^15: exact in f64
    let product = number * multiplier as f64;
    if product.is_nan() || product.is_infinite() {
        return Err(QuantityError::TooLarge {
            value: value.to_owned(),
        });
    }
    f64_to_bytes(product.trunc(), value)
}

/// How Dask reads the unit of a `--memory-limit` value, for messages: `"2.5"` is a byte
/// count, `"512k"` is kB.
///
/// # Example
/// ```
/// use dask_worker_spec::quantity::describe_dask_unit;
/// assert_eq!(describe_dask_unit("2.5"), "a number with no unit is a byte count");
/// assert_eq!(describe_dask_unit("512k"), "k is kB, 1000 bytes");
/// ```
pub fn describe_dask_unit(value: &str) -> String {
    if python_float(value).is_some() {
        return "a number with no unit is a byte count".to_owned();
    }
    let (_, unit) = split_dask_bytes(value);
    match dask_unit(&unit) {
        Some((_, 1)) if unit.is_empty() => "a number with no unit is a byte count".to_owned(),
        Some((_, 1)) => format!("{unit} is bytes"),
        Some((name, size)) if unit == name => format!("{name} is {size} bytes"),
        Some((name, size)) => format!("{unit} is {name}, {size} bytes"),
        None => format!("{unit:?} is not a unit Dask knows"),
    }
}

/// Whole bytes from a truncated float: negative and beyond-`u64` counts are errors.
fn f64_to_bytes(whole: f64, value: &str) -> Result<u64, QuantityError> {
    if whole < 0.0 {
        return Err(QuantityError::Negative {
            value: value.to_owned(),
        });
    }
    // 2^64 is exactly representable; anything below it converts exactly (it is a whole
    // float, and every whole float below 2^64 is a u64).
    if whole >= 18_446_744_073_709_551_616.0 {
        return Err(QuantityError::TooLarge {
            value: value.to_owned(),
        });
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // range checked above
    Ok(whole as u64)
}

/// The first code point of every run of ten Unicode decimal digits (category Nd), as in
/// Python 3.11's `unicodedata` (Unicode 14.0). Python's `float()` reads them as 0-9.
const UNICODE_DIGIT_ZEROS: [u32; 66] = [
    0x30, 0x660, 0x6F0, 0x7C0, 0x966, 0x9E6, 0xA66, 0xAE6, 0xB66, 0xBE6, 0xC66, 0xCE6, 0xD66,
    0xDE6, 0xE50, 0xED0, 0xF20, 0x1040, 0x1090, 0x17E0, 0x1810, 0x1946, 0x19D0, 0x1A80, 0x1A90,
    0x1B50, 0x1BB0, 0x1C40, 0x1C50, 0xA620, 0xA8D0, 0xA900, 0xA9D0, 0xA9F0, 0xAA50, 0xABF0, 0xFF10,
    0x104A0, 0x10D30, 0x11066, 0x110F0, 0x11136, 0x111D0, 0x112F0, 0x11450, 0x114D0, 0x11650,
    0x116C0, 0x11730, 0x118E0, 0x11950, 0x11C50, 0x11D50, 0x11DA0, 0x16A60, 0x16AC0, 0x16B50,
    0x1D7CE, 0x1D7D8, 0x1D7E2, 0x1D7EC, 0x1D7F6, 0x1E140, 0x1E2F0, 0x1E950, 0x1FBF0,
];

/// The value of a Unicode decimal digit (`str.isdecimal()` in Python).
fn python_decimal_value(c: char) -> Option<u8> {
    let code = u32::from(c);
    UNICODE_DIGIT_ZEROS
        .iter()
        .find(|zero| (**zero..**zero + 10).contains(&code))
        .and_then(|zero| u8::try_from(code - zero).ok())
}

fn is_python_decimal(c: char) -> bool {
    python_decimal_value(c).is_some()
}

/// The text CPython's `float()` and `int()` parse after their normalisation, or `None`
/// where they already raise: every Unicode whitespace becomes a space and every Unicode
/// decimal digit its ASCII digit (other non-ASCII is an error); surrounding ASCII
/// whitespace is stripped; underscores are allowed only between two digits (PEP 515) and
/// removed.
fn python_number_text(text: &str) -> Option<String> {
    let mut ascii = String::with_capacity(text.len());
    for c in text.chars() {
        if u32::from(c) < 127 {
            ascii.push(c);
        } else if c.is_whitespace() {
            ascii.push(' ');
        } else {
            ascii.push(char::from(b'0' + python_decimal_value(c)?));
        }
    }
    let trimmed = ascii.trim_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let mut cleaned = String::with_capacity(trimmed.len());
    let mut previous = '\0';
    for c in trimmed.chars() {
        if c == '_' {
            if !previous.is_ascii_digit() {
                return None;
            }
        } else {
            if !c.is_ascii_digit() && previous == '_' {
                return None;
            }
            cleaned.push(c);
        }
        previous = c;
    }
    if previous == '_' || cleaned.is_empty() {
        return None;
    }
    Some(cleaned)
}

/// Python's `float(text)` for a `str`, or `None` where it raises `ValueError`. After the
/// normalisation, the rest must be a decimal float literal or `inf`/`infinity`/`nan` with an
/// optional sign, which is exactly the grammar Rust's parser accepts, with the same correct
/// rounding.
pub(crate) fn python_float(text: &str) -> Option<f64> {
    let cleaned = python_number_text(text)?;
    if cleaned.bytes().any(|b| b.is_ascii_whitespace()) {
        return None;
    }
    cleaned.parse::<f64>().ok()
}

/// Python's `int(text)` for a `str` (what click's `int` type calls): an optional sign and
/// decimal digits after the same normalisation as `float()`; `None` where Python raises or
/// the value is beyond `i128`.
pub(crate) fn python_int(text: &str) -> Option<i128> {
    let cleaned = python_number_text(text)?;
    let digits = cleaned.strip_prefix(['+', '-']).unwrap_or(&cleaned);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    cleaned.parse::<i128>().ok()
}

/// The largest byte count at most `bytes` that Dask reads back exactly from its decimal
/// digits: Python reads a `--memory-limit` through a float, so above 2^53 only some
/// integers survive the trip. Flags the policy derives are rounded down to such a count.
///
/// # Example
/// ```
/// use dask_worker_spec::quantity::dask_exact_bytes;
/// assert_eq!(dask_exact_bytes(6_000_000_000), 6_000_000_000);
/// assert_eq!(dask_exact_bytes((1 << 53) + 1), 1 << 53);
/// ```
#[allow(
    clippy::cast_precision_loss,     // the point: the nearest float
    clippy::cast_possible_truncation, // whole floats below 2^64
    clippy::cast_sign_loss
)]
pub fn dask_exact_bytes(bytes: u64) -> u64 {
    let mut float = bytes as f64;
    if float as u128 > u128::from(bytes) {
        float = f64::from_bits(float.to_bits().saturating_sub(1));
    }
    float as u64
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

/// How strictly a Kubernetes quantity is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantityMode {
    /// Admission: the policy writes limits from these values, so anything that would round
    /// (half a byte, a microcore) is refused and so are negative values.
    Exact,
    /// Kubelet: the apiserver already accepted the value; like `Quantity.MilliValue()`, a
    /// value finer than a milli-unit is rounded up (away from zero) and a sign is kept.
    Kubelet,
}

/// Parses any Kubernetes quantity to thousandths of its unit (millicores for cpu,
/// millibytes for memory).
///
/// In [`QuantityMode::Exact`] the value must be a whole number of milli-units and not
/// negative; in [`QuantityMode::Kubelet`] it is rounded up to one, as the kubelet does.
///
/// # Example
/// ```
/// use dask_worker_spec::quantity::{parse_k8s_milli, QuantityMode};
/// assert_eq!(parse_k8s_milli("1.5", QuantityMode::Exact), Ok(1_500));
/// assert_eq!(parse_k8s_milli("6Gi", QuantityMode::Exact), Ok((6 << 30) * 1_000));
/// assert_eq!(parse_k8s_milli("0.0001", QuantityMode::Kubelet), Ok(1));
/// assert!(parse_k8s_milli("0.0001", QuantityMode::Exact).is_err());
/// assert_eq!(parse_k8s_milli("-1", QuantityMode::Kubelet), Ok(-1_000));
/// ```
pub fn parse_k8s_milli(value: &str, mode: QuantityMode) -> Result<i128, QuantityError> {
    let (decimal, multiplier, divisor) = k8s_parts(value)?;
    if mode == QuantityMode::Exact && decimal.negative && !decimal.is_zero() {
        return Err(QuantityError::Negative {
            value: value.to_owned(),
        });
    }
    let too_large = || QuantityError::TooLarge {
        value: value.to_owned(),
    };
    let multiplier = multiplier.checked_mul(1_000).ok_or_else(too_large)?;
    let milli = match mode {
        QuantityMode::Exact => match decimal.scaled_exact(multiplier, divisor) {
            Ok(milli) => milli,
            Err(true) => {
                return Err(QuantityError::FractionalMillicores {
                    value: value.to_owned(),
                });
            }
            Err(false) => return Err(too_large()),
        },
        QuantityMode::Kubelet => decimal
            .scaled_ceil(multiplier, divisor)
            .ok_or_else(too_large)?,
    };
    let milli = i128::try_from(milli).map_err(|_| too_large())?;
    Ok(if decimal.negative { -milli } else { milli })
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
    reads_back: impl Fn(&str) -> bool,
) -> String {
    let mut best = format!("{bytes}{bare}");
    if bytes == 0 {
        return best;
    }
    for (unit, size) in decimal.iter().chain(binary.iter()) {
        if bytes.is_multiple_of(*size) {
            let candidate = format!("{}{unit}", bytes / size);
            if candidate.len() < best.len() && reads_back(&candidate) {
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
    format_with_units(bytes, &K8S_DECIMAL, &K8S_BINARY, "", |_| true)
}

/// Formats a byte count as a Dask memory string (`6GB`, `6GiB`, or plain bytes), which
/// Dask reads back to the same count when the count is one Dask can represent (every count
/// below 2^53, and [`dask_exact_bytes`] of any count): a unit is used only when Dask's
/// float arithmetic gives the count back exactly.
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
    format_with_units(bytes, &DASK_DECIMAL, &DASK_BINARY, bare, |candidate| {
        MemoryLimit::parse(candidate) == Ok(MemoryLimit::Bytes(bytes))
    })
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
    #[case::float_product_truncated("8.2GB", 8_199_999_999)]
    #[case::tab_is_not_removed_but_float_strips_it("6\tGB", 6_000_000_000)]
    #[case::underscores_between_digits("1_000MB", 1_000_000_000)]
    #[case::kelvin_sign_lowers_to_k("6\u{212A}B", 6_000)]
    #[case::arabic_indic_digit("\u{663}GB", 3_000_000_000)]
    #[case::dot_alone_is_one(".GB", 1_000_000_000)]
    #[case::empty_is_one_byte("", 1)]
    #[case::beyond_2_pow_53_rounds_like_python("9007199254740993", 9_007_199_254_740_992)]
    fn dask_bytes_parse_exactly(#[case] text: &str, #[case] bytes: u64) {
        assert_eq!(parse_dask_bytes(text), Ok(bytes));
    }

    #[rstest]
    #[case::unknown_unit("6XB")]
    #[case::no_number_and_bad_unit("lots")]
    #[case::two_dots("1.2.3GB")]
    #[case::negative("-5GB")]
    #[case::too_many_digits("123456789012345678901234567890GB")]
    #[case::double_underscore("1__0MB")]
    #[case::dotless_i_is_not_a_unit("6\u{130}B")]
    #[case::superscript_is_not_a_decimal("\u{b2}GB")]
    #[case::overflow_to_infinity("1e400")]
    #[case::variable("$(MEM)")]
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
    #[case::one_and_a_half_is_one_byte("1.5", MemoryLimit::Bytes(1))]
    #[case::rounds_to_one_is_a_fraction("1.0000000000000001", MemoryLimit::Fraction("1.0000000000000001".into()))]
    #[case::empty_is_one_byte("", MemoryLimit::Bytes(1))]
    #[case::eight_point_two_gb("8.2GB", MemoryLimit::Bytes(8_199_999_999))]
    fn memory_limit_follows_distributed(#[case] text: &str, #[case] expected: MemoryLimit) {
        assert_eq!(MemoryLimit::parse(text), Ok(expected));
    }

    #[rstest]
    #[case::unknown("six gigs")]
    #[case::negative_number("-1")]
    #[case::negative_bytes("-5GB")]
    #[case::padded_auto(" auto")]
    #[case::upper_auto("AUTO")]
    #[case::infinity("inf")]
    #[case::not_a_number("nan")]
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

    #[rstest]
    #[case::unit("6GB", "GB is 1000000000 bytes")]
    #[case::short_unit("6g", "g is GB, 1000000000 bytes")]
    #[case::bare("2.5", "a number with no unit is a byte count")]
    #[case::exponent("6e3", "a number with no unit is a byte count")]
    #[case::bytes_suffix("512B", "B is bytes")]
    #[case::lower_bytes_suffix("512b", "b is bytes")]
    #[case::binary("64mi", "mi is MiB, 1048576 bytes")]
    #[case::unknown("6XB", "\"XB\" is not a unit Dask knows")]
    fn units_are_described_as_dask_reads_them(#[case] text: &str, #[case] description: &str) {
        assert_eq!(describe_dask_unit(text), description);
    }

    #[rstest]
    #[case::small(6_000_000_000, 6_000_000_000)]
    #[case::two_pow_53(1 << 53, 1 << 53)]
    #[case::odd_above_two_pow_53((1 << 53) + 1, 1 << 53)]
    #[case::max(u64::MAX, u64::MAX - 2047)]
    fn exact_bytes_round_down_to_what_dask_can_read(#[case] bytes: u64, #[case] exact: u64) {
        assert_eq!(dask_exact_bytes(bytes), exact);
    }

    #[rstest]
    #[case::plain_integer("2", 2000)]
    #[case::millicores("500m", 500)]
    #[case::decimal_cores("1.5", 1500)]
    #[case::decimal_si_giga("1.5G", 1_500_000_000_000)]
    #[case::binary_gibi("6Gi", 6 * (1i128 << 30) * 1000)]
    #[case::exponent("6e9", 6_000_000_000_000)]
    #[case::mebi("128Mi", 128 * 1024 * 1024 * 1000)]
    #[case::sub_milli_rounds_up("0.0001", 1)]
    #[case::nano_rounds_up("1n", 1)]
    #[case::zero("0", 0)]
    #[case::leading_zeros("007", 7000)]
    #[case::negative_kept("-1", -1000)]
    #[case::negative_sub_milli_away_from_zero("-0.0001", -1)]
    #[case::tiny_exponent_rounds_up("1e-40", 1)]
    fn kubelet_mode_reads_what_the_apiserver_accepted(#[case] text: &str, #[case] milli: i128) {
        assert_eq!(parse_k8s_milli(text, QuantityMode::Kubelet), Ok(milli));
    }

    #[rstest]
    #[case::empty("")]
    #[case::dask_style_gb_suffix("6GB")]
    #[case::no_number("Gi")]
    #[case::two_dots("1.2.3")]
    #[case::garbage("abc")]
    #[case::huge_exponent("1e99")]
    fn kubelet_mode_still_refuses_what_is_not_a_quantity(#[case] text: &str) {
        assert!(
            parse_k8s_milli(text, QuantityMode::Kubelet).is_err(),
            "{text}"
        );
    }

    #[rstest]
    #[case::sub_milli("0.0001")]
    #[case::negative("-1")]
    fn exact_mode_refuses_what_would_round(#[case] text: &str) {
        assert!(
            parse_k8s_milli(text, QuantityMode::Exact).is_err(),
            "{text}"
        );
    }

    proptest::proptest! {
        #[test]
        fn formatting_round_trips(bytes in 1u64..=u64::MAX) {
            // Every u64 byte count survives Kubernetes' units exactly, and every count Dask
            // can represent survives Dask's.
            proptest::prop_assert_eq!(parse_k8s_memory(&format_k8s_memory(bytes)), Ok(bytes));
            let exact = dask_exact_bytes(bytes).max(2);
            proptest::prop_assert_eq!(MemoryLimit::parse(&format_dask_bytes(exact)), Ok(MemoryLimit::Bytes(exact)));
        }

        #[test]
        fn python_int_reads_what_python_reads(n in proptest::num::i64::ANY) {
            proptest::prop_assert_eq!(python_int(&n.to_string()), Some(i128::from(n)));
            proptest::prop_assert_eq!(python_int(&format!(" {n}\t")), Some(i128::from(n)));
        }

        #[test]
        fn python_float_agrees_with_rust_on_plain_literals(x in proptest::num::f64::NORMAL | proptest::num::f64::ZERO) {
            proptest::prop_assert_eq!(python_float(&x.to_string()), Some(x));
            proptest::prop_assert_eq!(python_float(&format!(" {x:e}\n")), Some(x));
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
