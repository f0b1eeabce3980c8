//! The headers of a POSIX tar archive, walked without reading or quoting the contents: what
//! the control plane checks an uploaded image archive with, and what a node rewrites one
//! with before `docker load`.

/// One entry of an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarEntry {
    /// Its path, without a leading `./` (from a PAX or GNU long-name header before it, when
    /// there is one, else the ustar prefix and name fields).
    pub name: String,
    /// Its type flag: `b'0'` or `0` a file, `b'1'` a hard link, `b'2'` a symbolic link, `b'5'` a
    /// directory, `b'x'`/`b'g'` PAX and `b'L'`/`b'K'` GNU extension headers.
    pub kind: u8,
    /// What a link points to (empty for other entries).
    pub link: String,
    /// Where its 512-byte header starts.
    pub header_at: usize,
    /// Its size in bytes (its body follows the header).
    pub size: usize,
    /// Where the next header starts (the body padded to 512 bytes).
    pub next_at: usize,
}

/// Every entry up to the end-of-archive block, or why the headers are broken. Every offset is
/// checked against the archive's length, so a forged size cannot reach past it. Extension
/// headers (PAX, GNU long names) are entries too, and the long name or link they carry is
/// given to the entry after them.
pub fn entries(bytes: &[u8]) -> Result<Vec<TarEntry>, String> {
    let mut entries = Vec::new();
    let mut at = 0usize;
    let (mut long_name, mut long_link) = (None::<String>, None::<String>);
    while let Some(header) = bytes.get(at..at.saturating_add(512)) {
        if header.iter().all(|b| *b == 0) {
            break;
        }
        if header.get(257..262) != Some(b"ustar".as_slice()) {
            return Err(format!("a broken tar header at byte {at}"));
        }
        let field = |range: std::ops::Range<usize>| {
            let field = &header[range];
            let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
            String::from_utf8_lossy(&field[..end]).into_owned()
        };
        let mut name = field(0..100);
        // POSIX ustar (not GNU's `ustar  `) keeps the start of a long path in a prefix field.
        if &header[257..263] == b"ustar\0" {
            let prefix = field(345..500);
            if !prefix.is_empty() {
                name = format!("{prefix}/{name}");
            }
        }
        let kind = header[156];
        let mut link = field(157..257);
        let size_field = String::from_utf8_lossy(&header[124..136]);
        let size = usize::from_str_radix(size_field.trim_matches(|c: char| c == '\0' || c == ' '), 8)
            .map_err(|_| format!("a tar header at byte {at} has no valid size"))?;
        // The body, padded to 512 bytes, is inside the archive: slicing by these offsets
        // cannot fail.
        let next_at = size
            .checked_next_multiple_of(512)
            .and_then(|padded| (at + 512).checked_add(padded))
            .filter(|end| *end <= bytes.len())
            .ok_or_else(|| format!("the tar entry at byte {at} runs past the end of the archive"))?;
        let body = &bytes[at + 512..at + 512 + size];
        match kind {
            b'x' => {
                (long_name, long_link) = (None, None);
                for (key, value) in pax_records(body) {
                    match key {
                        "path" => long_name = Some(value.to_string()),
                        "linkpath" => long_link = Some(value.to_string()),
                        _ => {}
                    }
                }
            }
            b'L' => long_name = Some(String::from_utf8_lossy(body).trim_end_matches('\0').to_string()),
            b'K' => long_link = Some(String::from_utf8_lossy(body).trim_end_matches('\0').to_string()),
            _ => {
                name = long_name.take().unwrap_or(name);
                link = long_link.take().unwrap_or(link);
            }
        }
        let name = name.trim_start_matches("./").to_string();
        let link = link.trim_start_matches("./").to_string();
        entries.push(TarEntry { name, kind, link, header_at: at, size, next_at });
        at = next_at;
    }
    Ok(entries)
}

/// The `key=value` records of a PAX extended header (`"<length> <key>=<value>\n"` each); stops
/// at the first malformed one.
fn pax_records(body: &[u8]) -> Vec<(&str, &str)> {
    let mut records = Vec::new();
    let mut rest = body;
    while let Some(space) = rest.iter().position(|b| *b == b' ') {
        let Some(len) = std::str::from_utf8(&rest[..space]).ok().and_then(|n| n.parse::<usize>().ok()) else {
            break;
        };
        let Some(record) = rest.get(space + 1..len).and_then(|r| r.strip_suffix(b"\n")) else {
            break;
        };
        let Some((key, value)) = std::str::from_utf8(record).ok().and_then(|r| r.split_once('=')) else {
            break;
        };
        records.push((key, value));
        rest = &rest[len..];
    }
    records
}

/// Sets a tar header's checksum: the sum of its bytes with the checksum field read as spaces.
pub fn set_checksum(header: &mut [u8; 512]) {
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// A header for an entry `name` of `size` bytes (for tests and rewrites).
pub fn header(name: &str, size: usize) -> [u8; 512] {
    let mut header = [0u8; 512];
    let name = name.as_bytes();
    header[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
    header[124..136].copy_from_slice(format!("{:011o}\0", size).as_bytes());
    header[257..262].copy_from_slice(b"ustar");
    set_checksum(&mut header);
    header
}

/// An archive of `(name, contents)` entries, as `tar` writes them.
pub fn build(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, body) in entries {
        out.extend_from_slice(&header(name, body.len()));
        out.extend_from_slice(body);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_walked_and_forged_sizes_refused() {
        let archive = build(&[("./a.txt", b"hello"), ("b/c", b"")]);
        let found = entries(&archive).expect("walks");
        assert_eq!(found.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["a.txt", "b/c"]);
        assert_eq!((found[0].size, found[0].next_at, found[1].header_at), (5, 1024, 1024));
        let mut forged = archive.clone();
        forged[124..136].copy_from_slice(b"77777777777\0");
        assert!(entries(&forged).expect_err("past the end").contains("past the end"));
        // A body whose padding is cut off is refused too, not sliced past the end.
        let cut = &archive[..512 + 5];
        assert!(entries(cut).is_err());
        forged[124..136].copy_from_slice(b"99999999999\0");
        assert!(entries(&forged).is_err());
        assert!(entries(&[b'x'; 512]).expect_err("no magic").contains("broken tar header"));
    }

    #[test]
    fn long_names_links_and_extension_headers_are_read() {
        let mut prefixed = header("layer.tar", 0);
        prefixed[257..263].copy_from_slice(b"ustar\0");
        prefixed[345..349].copy_from_slice(b"./ab");
        set_checksum(&mut prefixed);
        let mut symlink = header("cd/layer.tar", 0);
        symlink[156] = b'2';
        symlink[157..172].copy_from_slice(b"../ab/layer.tar");
        set_checksum(&mut symlink);
        let long = format!("blobs/{}", "e".repeat(120));
        let record = format!("path={long}\n");
        let pax = format!("{} {record}", record.len() + 4);
        let mut pax_header = header("PaxHeaders/x", pax.len());
        pax_header[156] = b'x';
        set_checksum(&mut pax_header);
        let mut archive = Vec::new();
        for (head, body) in
            [(prefixed, &b""[..]), (symlink, b""), (pax_header, pax.as_bytes()), (header("short", 2), b"hi")]
        {
            archive.extend_from_slice(&head);
            archive.extend_from_slice(body);
            archive.resize(archive.len().div_ceil(512) * 512, 0);
        }
        archive.extend_from_slice(&[0u8; 1024]);
        let found = entries(&archive).expect("walks");
        let names: Vec<_> = found.iter().map(|e| (e.name.as_str(), e.kind, e.link.as_str())).collect();
        assert_eq!(names[0], ("ab/layer.tar", 0, ""));
        assert_eq!(names[1], ("cd/layer.tar", b'2', "../ab/layer.tar"));
        assert_eq!(names[2].1, b'x');
        assert_eq!(names[3], (long.as_str(), 0, ""), "the PAX path names the next entry");
        assert_eq!(found[3].size, 2);
    }
}
