//! git's pkt-line framing and the push request (`git-receive-pack`'s commands), sans-IO: a length in 4 hex digits
//! counting itself, then the payload; `0000` is a flush.

/// Largest payload in one pkt-line.
pub const MAX_PAYLOAD: usize = 65516;

/// The all-zero object id: "no object" in ref advertisements and push commands.
pub const ZERO_ID: &str = "0000000000000000000000000000000000000000";

/// One pkt-line.
#[derive(Debug, PartialEq, Eq)]
pub enum Pkt<'a> {
    Flush,
    Data(&'a [u8]),
}

/// Reads the pkt-line at the start of `buf`: `Ok(None)` when more bytes are needed, else the line and its length.
pub fn parse(buf: &[u8]) -> Result<Option<(Pkt<'_>, usize)>, String> {
    let Some(head) = buf.get(..4) else {
        return Ok(None);
    };
    let len = std::str::from_utf8(head)
        .ok()
        .and_then(|h| usize::from_str_radix(h, 16).ok())
        .ok_or_else(|| format!("bad pkt-line length {:?}", String::from_utf8_lossy(head)))?;
    match len {
        0 => Ok(Some((Pkt::Flush, 4))),
        1..=3 => Err(format!("pkt-line length {len} is below 4")),
        _ if len > MAX_PAYLOAD + 4 => Err(format!("pkt-line length {len} is over 65520")),
        _ => Ok(buf.get(4..len).map(|data| (Pkt::Data(data), len))),
    }
}

/// One data pkt-line (`data` at most `MAX_PAYLOAD` bytes).
pub fn line(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:04x}", data.len() + 4).into_bytes();
    out.extend_from_slice(data);
    out
}

pub const FLUSH: &[u8] = b"0000";

/// `data` on a side-band channel (1: data, 2: progress and messages, 3: fatal error), split as needed.
pub fn sideband(band: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in data.chunks(MAX_PAYLOAD - 1) {
        let mut payload = Vec::with_capacity(chunk.len() + 1);
        payload.push(band);
        payload.extend_from_slice(chunk);
        out.extend(line(&payload));
    }
    out
}

/// One ref update a push asks for; `None` is the zero id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushCommand {
    pub old: Option<String>,
    pub new: Option<String>,
    pub name: String,
}

/// The commands of a push and where its pack starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushRequest {
    pub commands: Vec<PushCommand>,
    pub capabilities: Vec<String>,
    /// Offset of the pack (after the flush) in the buffer parsed.
    pub pack_start: usize,
}

impl PushRequest {
    pub fn has(&self, capability: &str) -> bool {
        self.capabilities.iter().any(|c| c == capability)
    }
}

/// Parses the command list of a `git-receive-pack` request: `Ok(None)` until the flush that ends it has arrived.
pub fn parse_push(buf: &[u8]) -> Result<Option<PushRequest>, String> {
    let mut at = 0;
    let mut commands = Vec::new();
    let mut capabilities = Vec::new();
    loop {
        let Some((pkt, len)) = parse(&buf[at..])? else {
            return Ok(None);
        };
        at += len;
        let data = match pkt {
            Pkt::Flush => break,
            Pkt::Data(data) => data,
        };
        let data = data.strip_suffix(b"\n").unwrap_or(data);
        let (command, caps) = match data.iter().position(|b| *b == 0) {
            Some(nul) => (&data[..nul], Some(&data[nul + 1..])),
            None => (data, None),
        };
        let command =
            std::str::from_utf8(command).map_err(|_| "a push command is not UTF-8".to_owned())?;
        if let Some(caps) = caps {
            capabilities = String::from_utf8_lossy(caps)
                .split(' ')
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect();
        }
        if command.starts_with("shallow ") {
            continue;
        }
        if command.starts_with("push-cert") {
            return Err("signed pushes are not supported".into());
        }
        let mut parts = command.split(' ');
        let (Some(old), Some(new), Some(name), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("malformed push command {command:?}"));
        };
        let id = |s: &str| -> Result<Option<String>, String> {
            if s.len() != 40 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("`{s}` is not an object id"));
            }
            Ok((s != ZERO_ID).then(|| s.to_ascii_lowercase()))
        };
        commands.push(PushCommand {
            old: id(old)?,
            new: id(new)?,
            name: name.to_owned(),
        });
    }
    if commands.is_empty() {
        return Err("the push names no refs".into());
    }
    Ok(Some(PushRequest {
        commands,
        capabilities,
        pack_start: at,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(lines: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for l in lines {
            out.extend(line(l));
        }
        out.extend_from_slice(FLUSH);
        out.extend_from_slice(b"PACK....");
        out
    }

    #[test]
    fn parses_a_push_and_finds_the_pack() {
        let a = "a".repeat(40);
        let first =
            format!("{ZERO_ID} {a} refs/heads/main\0report-status side-band-64k agent=git/2\n");
        let second = format!("{a} {ZERO_ID} refs/heads/old\n");
        let body = request(&[first.as_bytes(), second.as_bytes()]);
        let push = parse_push(&body).unwrap().unwrap();
        assert_eq!(
            push.commands,
            vec![
                PushCommand {
                    old: None,
                    new: Some(a.clone()),
                    name: "refs/heads/main".into()
                },
                PushCommand {
                    old: Some(a),
                    new: None,
                    name: "refs/heads/old".into()
                },
            ]
        );
        assert!(push.has("report-status") && push.has("side-band-64k"));
        assert_eq!(&body[push.pack_start..], b"PACK....");
        // Every prefix short of the flush asks for more.
        let flush_end = push.pack_start;
        for cut in 0..flush_end {
            assert_eq!(parse_push(&body[..cut]).unwrap(), None, "{cut}");
        }
    }

    #[test]
    fn refuses_malformed_requests() {
        for bad in [
            b"zzzz".to_vec(),
            b"0002".to_vec(),
            request(&[b"not a command"]),
            request(&[format!("{} {} refs/heads/main", "g".repeat(40), ZERO_ID).as_bytes()]),
            b"0000".to_vec(),
        ] {
            assert!(
                parse_push(&bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(&bad)
            );
        }
    }

    #[test]
    fn sideband_splits_long_messages() {
        let data = vec![b'x'; MAX_PAYLOAD * 2];
        let out = sideband(1, &data);
        let mut at = 0;
        let mut total = 0;
        while at < out.len() {
            let (Pkt::Data(d), len) = parse(&out[at..]).unwrap().unwrap() else {
                panic!("flush in side-band data");
            };
            assert_eq!(d[0], 1);
            total += d.len() - 1;
            at += len;
        }
        assert_eq!(total, data.len());
    }
}
