//! Paths into an output row as templates and [`crate::Row::get`] write them:
//! `a.b`, `a.list[1]`, `pub_props.User-Property.k` or `a.'key.with.dots'`. Unlike SQL, a
//! bare key may hold any character but `.`, `[` and `]` (EMQX templates allow `-`).

use crate::ast::Seg;

/// A path that does not parse: byte offset into the path and what is wrong.
pub(crate) type PathError = (usize, String);

/// Parses a path; a single leading `.` is allowed (`${.clientid}` as EMQX writes it).
pub(crate) fn parse(path: &str) -> Result<Vec<Seg>, PathError> {
    let mut p = PathParser {
        src: path,
        pos: usize::from(path.starts_with('.')),
    };
    let mut segs = vec![Seg::Key(p.key()?)];
    while p.pos < path.len() {
        if p.eat('.') {
            segs.push(Seg::Key(p.key()?));
        } else if p.eat('[') {
            segs.push(Seg::Index(p.index()?));
        } else {
            return Err((p.pos, "expected `.` or `[` in path".to_owned()));
        }
    }
    Ok(segs)
}

struct PathParser<'s> {
    src: &'s str,
    pos: usize,
}

impl PathParser<'_> {
    fn rest(&self) -> &str {
        &self.src[self.pos..]
    }

    fn eat(&mut self, c: char) -> bool {
        let hit = self.rest().starts_with(c);
        if hit {
            self.pos += c.len_utf8();
        }
        hit
    }

    fn key(&mut self) -> Result<String, PathError> {
        let start = self.pos;
        if let Some(quote) = self
            .rest()
            .chars()
            .next()
            .filter(|c| *c == '\'' || *c == '"')
        {
            let body = &self.rest()[1..];
            let end = body
                .find(quote)
                .ok_or_else(|| (start, "unterminated quoted key".to_owned()))?;
            let key = body[..end].to_owned();
            self.pos += end + 2;
            return Ok(key);
        }
        let len = self
            .rest()
            .find(['.', '[', ']'])
            .unwrap_or(self.rest().len());
        if len == 0 {
            return Err((start, "empty key in path".to_owned()));
        }
        self.pos += len;
        Ok(self.src[start..self.pos].to_owned())
    }

    fn index(&mut self) -> Result<i64, PathError> {
        let start = self.pos;
        let end = self
            .rest()
            .find(']')
            .ok_or_else(|| (start, "unterminated `[` in path".to_owned()))?;
        let n = self.rest()[..end]
            .trim()
            .parse::<i64>()
            .map_err(|_| (start, "array index must be an integer".to_owned()))?;
        self.pos += end + 1;
        Ok(n)
    }
}
