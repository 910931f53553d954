//! Byte sizes as the sidecar's flags and the `dapr.io/*-size` annotations write them.

/// The smallest read buffer the sidecar accepts: a request head must fit in it.
pub const MIN_READ_BUFFER_SIZE: u64 = 8 * 1024;

/// Parses a Kubernetes-style quantity of bytes: `4Mi`, `16Mi`, `512Ki`, `1G`, `4194304`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || {
        format!(
            "{s:?} is not a size: use a whole number of bytes with an optional unit Ki, Mi, Gi, Ti (powers of 1024) or k, M, G, T (powers of 1000), for example 4Mi"
        )
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        _ => return Err(bad()),
    };
    let v = n.checked_mul(mult).ok_or_else(bad)?;
    if v == 0 {
        return Err(format!("{s:?} must be larger than zero"));
    }
    Ok(v)
}

/// Parses a read-buffer size: a size (see [`parse_size`]) of at least 8Ki.
pub fn parse_read_buffer_size(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    if n < MIN_READ_BUFFER_SIZE {
        return Err(format!("{s:?} is below the minimum of 8Ki"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_buffer_minimum() {
        assert_eq!(parse_read_buffer_size("8Ki"), Ok(8192));
        assert!(
            parse_read_buffer_size("4Ki")
                .unwrap_err()
                .contains("minimum of 8Ki")
        );
    }
}
