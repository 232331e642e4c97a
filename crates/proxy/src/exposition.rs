//! The Prometheus text exposition format the proxy's `/metrics` writes, read
//! back: `tessera edges` (and anything else scraping a proxy) parses samples
//! with this one parser. The dashboard has its TypeScript twin
//! (`ui/src/mesh/prom.ts`), which reads the same pages through `pods/proxy`.

use std::collections::BTreeMap;

/// One sample of the Prometheus text format: name, labels, value.
pub fn parse_sample(line: &str) -> Option<(&str, BTreeMap<String, String>, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, rest) = match line.find('{') {
        Some(i) => (&line[..i], &line[i..]),
        None => {
            let (name, value) = line.split_once(' ')?;
            return Some((name, BTreeMap::new(), value.split_whitespace().next()?.parse().ok()?));
        }
    };
    let mut labels = BTreeMap::new();
    let mut chars = rest[1..].char_indices().peekable();
    let body = &rest[1..];
    // key="value" pairs, values with \" \\ \n escapes.
    let end = loop {
        while chars.peek().is_some_and(|(_, c)| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let (start, c) = *chars.peek()?;
        if c == '}' {
            break start;
        }
        let eq = body[start..].find('=')? + start;
        let key = body[start..eq].trim().to_owned();
        while chars.peek().is_some_and(|(i, _)| *i <= eq) {
            chars.next();
        }
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            let (_, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break,
                other => value.push(other),
            }
        }
        labels.insert(key, value);
    };
    let after = &body[end + 1..];
    Some((name, labels, after.split_whitespace().next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_samples() {
        let (name, labels, value) = parse_sample(r#"request_total{direction="outbound",authority="a\"b",dst_pod="x"} 3"#).unwrap();
        assert_eq!((name, value), ("request_total", 3.0));
        assert_eq!(labels["authority"], "a\"b");
        assert_eq!(labels["dst_pod"], "x");
        assert_eq!(parse_sample("process_start_time_seconds 17.5").unwrap().2, 17.5);
        assert!(parse_sample("# TYPE request_total counter").is_none());
        assert!(parse_sample("request_total{direction=\"out").is_none());
    }
}
