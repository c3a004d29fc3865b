//! ACL topic templates: an MQTT topic filter in which `${clientid}`, `${username}`,
//! `${attr.NAME}` and `${cert.cn}` stand for values of the connection. Parsed here so the
//! resource validation and the hub share one grammar.

/// A value a template refers to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Var {
    ClientId,
    Username,
    CertCn,
    Attr(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Var(Var),
}

/// A parsed topic template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate {
    parts: Vec<Part>,
}

impl TopicTemplate {
    /// Parses and checks a template: placeholders known, wildcards where MQTT allows them.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("a topic filter must not be empty".into());
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            if start > 0 {
                parts.push(Part::Literal(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| format!("unclosed placeholder in {text:?}"))?;
            let name = &after[..end];
            let var = match name {
                "clientid" => Var::ClientId,
                "username" => Var::Username,
                "cert.cn" => Var::CertCn,
                n if n.starts_with("attr.") && n.len() > 5 => Var::Attr(n[5..].to_owned()),
                other => {
                    return Err(format!(
                        "unknown placeholder ${{{other}}} (clientid, username, attr.NAME, cert.cn)"
                    ));
                }
            };
            parts.push(Part::Var(var));
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        let template = Self { parts };
        // Placeholders never expand to wildcards or separators, so checking the filter with
        // a plain stand-in for each is enough.
        check_filter(&template.render_with(|_| Some("x")).unwrap_or_default())?;
        Ok(template)
    }

    /// Whether the template has no placeholder (the same filter for every connection).
    pub fn is_static(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    /// The placeholders used.
    pub fn vars(&self) -> impl Iterator<Item = &Var> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(v) => Some(v),
            Part::Literal(_) => None,
        })
    }

    /// The filter for one connection, or `None` when a value is missing, empty, or holds
    /// `/`, `+`, `#` or NUL (which would let a device widen its own rule).
    pub fn render_with<'a>(&self, value: impl Fn(&Var) -> Option<&'a str>) -> Option<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Var(v) => {
                    let text = value(v)?;
                    if text.is_empty() || text.contains(['/', '+', '#', '\0']) {
                        return None;
                    }
                    out.push_str(text);
                }
            }
        }
        Some(out)
    }
}

/// MQTT filter rules: `#` alone and last, `+` alone in its level.
fn check_filter(filter: &str) -> Result<(), String> {
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(format!(
                "invalid filter {filter:?}: '#' must be a whole level and the last one"
            ));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!(
                "invalid filter {filter:?}: '+' must be a whole level"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ctx(v: &Var) -> Option<&'static str> {
        match v {
            Var::ClientId => Some("dev1"),
            Var::Username => Some("alice"),
            Var::CertCn => None,
            Var::Attr(a) if a == "site" => Some("paris"),
            Var::Attr(a) if a == "evil" => Some("a/#"),
            Var::Attr(_) => None,
        }
    }

    #[test]
    fn renders_and_refuses() {
        let cases = [
            ("devices/${clientid}/#", Some("devices/dev1/#")),
            ("u/${username}-${clientid}", Some("u/alice-dev1")),
            ("site/${attr.site}/+", Some("site/paris/+")),
            ("site/${attr.missing}", None),
            ("c/${cert.cn}", None),
            ("e/${attr.evil}", None),
            ("plain/topic", Some("plain/topic")),
        ];
        for (text, want) in cases {
            let t = TopicTemplate::parse(text).unwrap();
            assert_eq!(t.render_with(ctx).as_deref(), want, "{text}");
        }
    }

    #[test]
    fn rejects_bad_templates() {
        for bad in [
            "",
            "a/${nope}",
            "a/${clientid",
            "a/#/b",
            "a/b+",
            "${attr.}",
            "a#",
        ] {
            assert!(TopicTemplate::parse(bad).is_err(), "{bad}");
        }
        assert!(TopicTemplate::parse("a/+/${clientid}/#").is_ok());
    }
}
