//! Kubernetes resource quantities (`500m`, `2`, `1.5Gi`, `6e9`) in integer milli-units.
//!
//! The parser is the shared one in `dask-worker-spec` (the policy's, so the node agent and
//! the policy read a quantity the same way) in its kubelet mode: the apiserver has already
//! accepted the value, so a value finer than a milli-unit is rounded up as the kubelet does
//! instead of refused. Integer arithmetic only: limits decide OOM kills and scheduling.

use crate::error::{Error, Result};
use dask_worker_spec::{QuantityError, QuantityMode, parse_k8s_milli};

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

/// Parses a Kubernetes quantity string into milli-units (rounded up).
pub fn parse(value: &str) -> Result<Milli> {
    parse_k8s_milli(value, QuantityMode::Kubelet)
        .map(Milli)
        .map_err(|e| Error::Quantity {
            value: value.to_string(),
            reason: match e {
                QuantityError::Syntax { .. } => "not a number with an optional suffix",
                QuantityError::UnknownUnit { .. } => "unknown suffix",
                QuantityError::TooLarge { .. } => "number too large",
                QuantityError::Negative { .. } => "negative",
                QuantityError::FractionalBytes { .. }
                | QuantityError::FractionalMillicores { .. } => "finer than a milli-unit",
            },
        })
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
