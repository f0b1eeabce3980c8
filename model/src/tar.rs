//! The headers of a POSIX tar archive, walked without reading or quoting the contents: what
//! the control plane checks an uploaded image archive with, and what a node rewrites one
//! with before `docker load`.

/// One entry of an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarEntry {
    /// Its path, without a leading `./`.
    pub name: String,
    /// Where its 512-byte header starts.
    pub header_at: usize,
    /// Its size in bytes (its body follows the header).
    pub size: usize,
    /// Where the next header starts (the body padded to 512 bytes).
    pub next_at: usize,
}

/// Every entry up to the end-of-archive block, or why the headers are broken. Every offset is
/// checked against the archive's length, so a forged size cannot reach past it.
pub fn entries(bytes: &[u8]) -> Result<Vec<TarEntry>, String> {
    let mut entries = Vec::new();
    let mut at = 0usize;
    while let Some(header) = bytes.get(at..at.saturating_add(512)) {
        if header.iter().all(|b| *b == 0) {
            break;
        }
        if header.get(257..262) != Some(b"ustar".as_slice()) {
            return Err(format!("a broken tar header at byte {at}"));
        }
        let name_end = header[..100].iter().position(|b| *b == 0).unwrap_or(100);
        let name = String::from_utf8_lossy(&header[..name_end]).trim_start_matches("./").to_string();
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
        entries.push(TarEntry { name, header_at: at, size, next_at });
        at = next_at;
    }
    Ok(entries)
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
}
