//! git-lfs pointer files: the small text a repo holds in place of a large file, naming the object by its
//! sha256 and size.

/// A git-lfs pointer file's object: `(sha256 hex, size)`.
pub fn parse_lfs_pointer(bytes: &[u8]) -> Option<(String, u64)> {
    if bytes.len() > 1024 {
        return None;
    }
    let text = std::str::from_utf8(bytes).ok()?;
    let mut lines = text.lines();
    if !lines
        .next()?
        .starts_with("version https://git-lfs.github.com/spec/")
    {
        return None;
    }
    let (mut oid, mut size) = (None, None);
    for line in lines {
        if let Some(o) = line.strip_prefix("oid sha256:") {
            oid = Some(o.to_owned());
        } else if let Some(s) = line.strip_prefix("size ") {
            size = s.parse().ok();
        }
    }
    let oid =
        oid.filter(|o| o.len() == 64 && o.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))?;
    Some((oid, size?))
}

/// The pointer file git-lfs writes for an object.
pub fn lfs_pointer(oid: &str, size: u64) -> String {
    format!("version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lfs_pointers_round_trip() {
        let oid = "a".repeat(64);
        let pointer = lfs_pointer(&oid, 42);
        assert_eq!(parse_lfs_pointer(pointer.as_bytes()), Some((oid, 42)));
        assert_eq!(parse_lfs_pointer(b"hello"), None);
        assert_eq!(
            parse_lfs_pointer(
                b"version https://git-lfs.github.com/spec/v1\noid sha256:xyz\nsize 1\n"
            ),
            None
        );
    }
}
