//! Backend load reports: the ORCA `endpoint-load-metrics` response header, in its TEXT
//! form (`TEXT application_utilization=0.93, cpu_utilization=0.5, rps_fractional=10`).
//!
//! The utilization levee acts on is `application_utilization` when the report has it
//! and it is above zero, else `cpu_utilization` (gRPC's weighted round robin reads
//! them the same way): 1.0 means at capacity, more means the backend queues. A report
//! levee cannot use is ignored and counted by [`Rejected`]: not TEXT (`JSON`, `BIN`) or
//! without either key is `unsupported`; bad syntax or a value that is not a number is
//! `malformed`; a negative, infinite or NaN value, or one above [`MAX_UTILIZATION`], is
//! `out_of_range`. Parsing is bounded: a value longer than [`MAX_LEN`] is malformed.

use http::header::{HeaderMap, HeaderName};

/// The response header backends report their load in.
pub static HEADER: HeaderName = HeaderName::from_static("endpoint-load-metrics");

/// Highest utilization taken at its word: a backend a hundred times over its capacity
/// is broken or lying, and one such report would drive its limit to the floor.
pub const MAX_UTILIZATION: f64 = 100.0;

/// Longest header value parsed (a real report is under a hundred bytes).
pub const MAX_LEN: usize = 1024;

/// Why a report was ignored. Each is a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Not a `key=value` list, or a value that is not a number, or too long.
    Malformed = 1,
    /// Negative, NaN, infinite, or above [`MAX_UTILIZATION`].
    OutOfRange = 2,
    /// Another form (`JSON`, `BIN`), or no utilization in it.
    Unsupported = 3,
}

/// The result labels of `levee_load_reports_total`, indexed by [`result_index`].
pub const RESULTS: [&str; 4] = ["accepted", "malformed", "out_of_range", "unsupported"];

/// Index of a parse result in [`RESULTS`].
pub fn result_index(result: &Result<f64, Rejected>) -> usize {
    match result {
        Ok(_) => 0,
        Err(r) => *r as usize,
    }
}

/// Removes every `endpoint-load-metrics` field from `headers` (they are for levee, not
/// the client) and parses the first. `None` when there was none.
pub fn take(headers: &mut HeaderMap) -> Option<Result<f64, Rejected>> {
    let mut values = match headers.entry(&HEADER) {
        http::header::Entry::Occupied(e) => e.remove_entry_mult().1,
        http::header::Entry::Vacant(_) => return None,
    };
    values.next().map(|v| parse(v.as_bytes()))
}

/// Parses one header value: the backend's utilization, or why it is ignored.
pub fn parse(value: &[u8]) -> Result<f64, Rejected> {
    if value.len() > MAX_LEN {
        return Err(Rejected::Malformed);
    }
    let text = std::str::from_utf8(value)
        .map_err(|_| Rejected::Malformed)?
        .trim();
    let (form, rest) = text
        .split_once(|c: char| c.is_ascii_whitespace())
        .unwrap_or((text, ""));
    if form.eq_ignore_ascii_case("JSON") || form.eq_ignore_ascii_case("BIN") {
        return Err(Rejected::Unsupported);
    }
    if !form.eq_ignore_ascii_case("TEXT") {
        return Err(Rejected::Malformed);
    }
    let (mut application, mut cpu) = (None, None);
    for item in rest.split(',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let (key, value) = item.split_once('=').ok_or(Rejected::Malformed)?;
        let slot = match key.trim() {
            "application_utilization" => &mut application,
            "cpu_utilization" => &mut cpu,
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(number(value.trim())?);
        }
    }
    let utilization = match (application, cpu) {
        (Some(0.0), Some(c)) => c,
        (Some(a), _) => a,
        (None, Some(c)) => c,
        (None, None) => return Err(Rejected::Unsupported),
    };
    if utilization.is_finite() && (0.0..=MAX_UTILIZATION).contains(&utilization) {
        Ok(utilization)
    } else {
        Err(Rejected::OutOfRange)
    }
}

/// A decimal number; `NaN` and infinities parse (and are out of range), anything else
/// that is not a number is malformed.
fn number(text: &str) -> Result<f64, Rejected> {
    let plain = text
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'));
    let named = ["nan", "inf", "+inf", "-inf", "infinity", "-infinity"]
        .iter()
        .any(|n| text.eq_ignore_ascii_case(n));
    if !(plain || named) {
        return Err(Rejected::Malformed);
    }
    text.parse::<f64>().map_err(|_| Rejected::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn text_reports_parse() {
        assert_eq!(parse(b"TEXT application_utilization=0.93"), Ok(0.93));
        assert_eq!(
            parse(b"TEXT cpu_utilization=0.3, mem_utilization=0.8, rps_fractional=10.0, named_metrics.queue=4"),
            Ok(0.3)
        );
        // application_utilization wins when above zero; cpu otherwise.
        assert_eq!(
            parse(b"TEXT cpu_utilization=0.2,application_utilization=1.5"),
            Ok(1.5)
        );
        assert_eq!(
            parse(b"TEXT application_utilization=0, cpu_utilization=0.4"),
            Ok(0.4)
        );
        assert_eq!(parse(b"TEXT application_utilization=0"), Ok(0.0));
        assert_eq!(parse(b"  text   application_utilization = 2 ,"), Ok(2.0));
        assert_eq!(parse(b"TEXT application_utilization=1e0"), Ok(1.0));
    }

    #[test]
    fn bad_reports_are_rejected_with_a_reason() {
        use Rejected::*;
        for (value, why) in [
            (&b"TEXT application_utilization=abc"[..], Malformed),
            (b"TEXT application_utilization=", Malformed),
            (b"TEXT application_utilization", Malformed),
            (b"TEXT application_utilization=0x10", Malformed),
            (b"application_utilization=0.5", Malformed),
            (b"", Malformed),
            (b"TEXT application_utilization=\xff", Malformed),
            (b"TEXT application_utilization=-0.5", OutOfRange),
            (b"TEXT application_utilization=NaN", OutOfRange),
            (b"TEXT application_utilization=inf", OutOfRange),
            (b"TEXT application_utilization=100.5", OutOfRange),
            (b"TEXT application_utilization=1e300", OutOfRange),
            (b"TEXT cpu_utilization=-1", OutOfRange),
            (b"JSON {\"application_utilization\":0.5}", Unsupported),
            (b"BIN CgQIARAC", Unsupported),
            (b"TEXT mem_utilization=0.5", Unsupported),
            (b"TEXT", Unsupported),
        ] {
            assert_eq!(
                parse(value),
                Err(why),
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
        let long = format!("TEXT application_utilization=0.5,{}", "x=1,".repeat(400));
        assert_eq!(parse(long.as_bytes()), Err(Malformed));
        assert_eq!(parse(b"TEXT application_utilization=100"), Ok(100.0));
    }

    #[test]
    fn take_strips_every_report_and_reads_the_first() {
        let mut h = HeaderMap::new();
        assert_eq!(take(&mut h), None);
        h.append(
            &HEADER,
            HeaderValue::from_static("TEXT application_utilization=0.7"),
        );
        h.append(
            &HEADER,
            HeaderValue::from_static("TEXT application_utilization=9"),
        );
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        assert_eq!(take(&mut h), Some(Ok(0.7)));
        assert!(!h.contains_key(&HEADER));
        assert_eq!(h.len(), 1);
        assert_eq!(result_index(&Ok(0.7)), 0);
        assert_eq!(
            RESULTS[result_index(&Err(Rejected::OutOfRange))],
            "out_of_range"
        );
    }
}
