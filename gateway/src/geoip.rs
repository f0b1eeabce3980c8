//! IP geolocation for the gateway: maps a client address to a [`GeoPoint`] and continent code using
//! a MaxMind DB file in the GeoLite2-City layout (GeoLite2-City, GeoIP2-City, DB-IP City Lite, ...),
//! so requests without an `x-fluxplane-client-geo` header can still be routed to a nearby region.
//! The database is untrusted input: lookups never panic and treat any corruption as "unknown".
//! [`write`](mod@write) builds small databases in the same layout for tests, benchmarks and `fluxplane dev`.

use std::net::IpAddr;
use std::path::Path;

use anyhow::Context as _;
use serde::Deserialize;

use model::geo::GeoPoint;

/// An opened MaxMind DB, held in memory.
#[derive(Debug)]
pub struct GeoIpDb {
    // Read into memory rather than mmapped: mmap needs `unsafe` and the file could change under us.
    reader: maxminddb::Reader<Vec<u8>>,
}

/// Where an address is, according to the database.
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    /// The record's approximate coordinates.
    pub point: GeoPoint,
    /// The record's continent code (`EU`, `NA`, `AS`, ...), if it has one.
    pub continent: Option<String>,
}

/// The parts of a GeoLite2-City record we use; serde skips every other field without decoding it.
#[derive(Deserialize)]
struct CityRecord<'a> {
    #[serde(borrow)]
    continent: Option<ContinentRecord<'a>>,
    location: Option<LocationRecord>,
}

#[derive(Deserialize)]
struct ContinentRecord<'a> {
    code: Option<&'a str>,
}

#[derive(Deserialize)]
struct LocationRecord {
    latitude: Option<f64>,
    longitude: Option<f64>,
}

/// Longest continent code we pass on; real ones have two letters, and a hostile database should not
/// make every request copy a huge string.
const MAX_CONTINENT_LEN: usize = 8;

impl GeoIpDb {
    /// Reads and checks the MaxMind DB file at `path`.
    pub fn open(path: &Path) -> anyhow::Result<GeoIpDb> {
        let context = || format!("loading GeoIP database {}", path.display());
        let bytes = std::fs::read(path).with_context(context)?;
        Self::from_bytes(bytes).with_context(context)
    }

    /// Checks an in-memory MaxMind DB, such as one from [`write::city_db`].
    pub fn from_bytes(bytes: Vec<u8>) -> anyhow::Result<GeoIpDb> {
        let reader = maxminddb::Reader::from_source(bytes).context("not a valid MaxMind DB")?;
        Ok(GeoIpDb { reader })
    }

    /// The location of `ip`, or `None` when the database does not know it, has no usable
    /// coordinates for it, or is corrupt.
    pub fn locate(&self, ip: IpAddr) -> Option<Located> {
        // `::ffff:a.b.c.d` is how dual-stack listeners report IPv4 clients. Their data sits in the
        // IPv4 tree (under ::/96), and not every database aliases ::ffff:0:0/96 to it; ours don't.
        let ip = ip.to_canonical();
        if ip.is_ipv6() && self.reader.metadata().ip_version == 4 {
            return None;
        }
        // Errors are treated as misses: a bad record must not fail the request it was looked up for.
        let record: CityRecord<'_> = self.reader.lookup(ip).ok()?.decode().ok()??;
        let location = record.location?;
        let point = GeoPoint::new(location.latitude?, location.longitude?)?;
        let continent = record
            .continent
            .and_then(|c| c.code)
            .filter(|code| !code.is_empty() && code.len() <= MAX_CONTINENT_LEN)
            .map(str::to_owned);
        Some(Located { point, continent })
    }

    /// A one-line summary for the start-up log.
    pub fn description(&self) -> String {
        let m = self.reader.metadata();
        format!(
            "{} (IPv{} tree, {} nodes, {}-bit records, built at Unix time {})",
            m.database_type, m.ip_version, m.node_count, m.record_size, m.build_epoch
        )
    }
}

/// Builds small MaxMind DB files in the GeoLite2-City layout, for tests, benchmarks and
/// `fluxplane dev` demos.
///
/// The output follows the MaxMind DB format 2.0 (<https://maxmind.github.io/MaxMind-DB/>): an IPv6
/// search tree with IPv4 networks under `::/96` (as MaxMind's own databases have them), the 16-byte
/// separator, the data section, and the metadata. Each record is
/// `{continent: {code}, location: {latitude, longitude}}`.
pub mod write {
    use std::collections::HashMap;
    use std::net::IpAddr;
    use std::time::{SystemTime, UNIX_EPOCH};

    /// One network and where it is.
    #[derive(Debug, Clone, PartialEq)]
    pub struct CityEntry {
        /// The network's address; bits past `prefix_len` are ignored.
        pub network: IpAddr,
        /// Prefix length: 0..=32 for IPv4, 0..=128 for IPv6.
        pub prefix_len: u8,
        /// Latitude in degrees, written as given (even out of range, so tests can check readers).
        pub lat: f64,
        /// Longitude in degrees, written as given.
        pub lon: f64,
        /// Continent code, such as `EU`.
        pub continent: String,
    }

    /// A GeoLite2-City style database holding `entries`.
    ///
    /// Entries may nest or overlap: for an address inside several, the longest prefix wins, and of
    /// equal prefixes the later entry. An empty slice gives a valid database that knows no address.
    ///
    /// # Panics
    ///
    /// Only on invalid input: a prefix longer than its address (IPv4 > 32, IPv6 > 128), a continent
    /// code over 16 MiB, or a database too large for 32-bit records.
    pub fn city_db(entries: &[CityEntry]) -> Vec<u8> {
        let networks: Vec<_> = entries.iter().map(|e| (e.network, e.prefix_len, city_record(e))).collect();
        build(&networks, 6, None)
    }

    pub(super) fn city_record(e: &CityEntry) -> Value {
        Value::Map(vec![
            ("continent", Value::Map(vec![("code", Value::Str(e.continent.clone()))])),
            ("location", Value::Map(vec![("latitude", Value::Double(e.lat)), ("longitude", Value::Double(e.lon))])),
        ])
    }

    /// A data-section value; only the types our records and the metadata need.
    #[derive(Debug, Clone, PartialEq)]
    pub(super) enum Value {
        Str(String),
        Double(f64),
        U16(u16),
        U32(u32),
        U64(u64),
        Map(Vec<(&'static str, Value)>),
        Array(Vec<Value>),
    }

    /// A search-tree record: another node, or a leaf.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Rec {
        Node(usize),
        Empty,
        /// Offset into the data section.
        Data(usize),
    }

    /// Writes a database of `ip_version` 4 or 6 with arbitrary records; `record_size` forces the
    /// record width (24, 28 or 32 bits) instead of the smallest that fits.
    pub(super) fn build(networks: &[(IpAddr, u8, Value)], ip_version: u16, record_size: Option<u16>) -> Vec<u8> {
        let tree_bits: u32 = if ip_version == 6 { 128 } else { 32 };

        // Identical records share one copy in the data section.
        let mut data = Vec::new();
        let mut offsets: HashMap<Vec<u8>, usize> = HashMap::new();
        let mut prefixes = Vec::with_capacity(networks.len());
        for (network, prefix_len, value) in networks {
            let (bits, len) = tree_prefix(*network, *prefix_len, ip_version);
            let mut encoded = Vec::new();
            encode(&mut encoded, value);
            let offset = *offsets.entry(encoded).or_insert_with_key(|bytes| {
                data.extend_from_slice(bytes);
                data.len() - bytes.len()
            });
            prefixes.push((bits, len, offset));
        }

        // Shorter prefixes first, so a longer one is always carved out of what is already there
        // and never overwritten; the sort is stable, so among equal prefixes the later entry wins.
        prefixes.sort_by_key(|&(_, len, _)| len);
        // Node 0 is the root. It always exists, since readers reject a tree with no nodes.
        let mut nodes: Vec<[Rec; 2]> = vec![[Rec::Empty; 2]];
        for (bits, len, offset) in prefixes {
            insert(&mut nodes, bits, tree_bits, len, Rec::Data(offset));
        }

        let node_count = nodes.len();
        let largest = node_count + 16 + data.len();
        let record_size = record_size.unwrap_or(match largest {
            0..0x100_0000 => 24,
            0x100_0000..0x1000_0000 => 28,
            _ => 32,
        });
        assert!(matches!(record_size, 24 | 28 | 32), "record size {record_size} is not 24, 28 or 32");
        assert!(largest < 1usize << record_size, "database too large for {record_size}-bit records");
        let node_count = u32::try_from(node_count).expect("node count fits the record size");
        let value = |rec: Rec| -> u32 {
            // Record values are node numbers, node_count for "no data", or data offsets past the
            // separator; all fit in u32, as checked above.
            let v = match rec {
                Rec::Node(n) => n,
                Rec::Empty => node_count as usize,
                Rec::Data(offset) => node_count as usize + 16 + offset,
            };
            v as u32
        };

        let mut out = Vec::with_capacity(nodes.len() * usize::from(record_size) / 4 + 16 + data.len() + 512);
        for [left, right] in &nodes {
            let (l, r) = (value(*left), value(*right));
            match record_size {
                24 => {
                    out.extend_from_slice(&l.to_be_bytes()[1..]);
                    out.extend_from_slice(&r.to_be_bytes()[1..]);
                }
                // The middle byte holds the top nibble of each record: left's high, right's low.
                28 => {
                    out.extend_from_slice(&l.to_be_bytes()[1..]);
                    out.push((((l >> 24) & 0x0F) << 4 | ((r >> 24) & 0x0F)) as u8);
                    out.extend_from_slice(&r.to_be_bytes()[1..]);
                }
                _ => {
                    out.extend_from_slice(&l.to_be_bytes());
                    out.extend_from_slice(&r.to_be_bytes());
                }
            }
        }
        out.extend_from_slice(&[0; 16]);
        out.extend_from_slice(&data);
        out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");

        let build_epoch = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let description = format!("fluxplane test database ({} networks)", networks.len());
        let metadata = Value::Map(vec![
            ("binary_format_major_version", Value::U16(2)),
            ("binary_format_minor_version", Value::U16(0)),
            ("build_epoch", Value::U64(build_epoch)),
            ("database_type", Value::Str("GeoLite2-City".into())),
            ("description", Value::Map(vec![("en", Value::Str(description))])),
            ("ip_version", Value::U16(ip_version)),
            ("languages", Value::Array(vec![Value::Str("en".into())])),
            ("node_count", Value::U32(node_count)),
            ("record_size", Value::U16(record_size)),
        ]);
        encode(&mut out, &metadata);
        out
    }

    /// The network as the top `len` bits of a `tree_bits`-wide number.
    fn tree_prefix(network: IpAddr, prefix_len: u8, ip_version: u16) -> (u128, u8) {
        match network {
            IpAddr::V4(v4) => {
                assert!(prefix_len <= 32, "IPv4 prefix /{prefix_len} is longer than 32 bits");
                // In an IPv6 tree, IPv4 lives at ::a.b.c.d, i.e. below 96 zero bits.
                let offset = if ip_version == 6 { 96 } else { 0 };
                (u128::from(u32::from(v4)), prefix_len + offset)
            }
            IpAddr::V6(v6) => {
                assert!(ip_version == 6, "IPv6 network {v6} in an IPv4 database");
                assert!(prefix_len <= 128, "IPv6 prefix /{prefix_len} is longer than 128 bits");
                (u128::from(v6), prefix_len)
            }
        }
    }

    /// Points every address under the prefix at `leaf`, splitting leaves on the way down.
    fn insert(nodes: &mut Vec<[Rec; 2]>, bits: u128, tree_bits: u32, len: u8, leaf: Rec) {
        if len == 0 {
            nodes[0] = [leaf; 2];
            return;
        }
        let mut node = 0;
        for depth in 0..u32::from(len) {
            let bit = ((bits >> (tree_bits - 1 - depth)) & 1) as usize;
            if depth + 1 == u32::from(len) {
                nodes[node][bit] = leaf;
                return;
            }
            node = match nodes[node][bit] {
                Rec::Node(child) => child,
                // A shorter prefix (or nothing) covers this half: split it, keeping its value on
                // both sides so the rest of it still resolves the same way.
                covering => {
                    nodes.push([covering; 2]);
                    let child = nodes.len() - 1;
                    nodes[node][bit] = Rec::Node(child);
                    child
                }
            };
        }
    }

    // Data-section type numbers.
    const UTF8_STRING: u8 = 2;
    const DOUBLE: u8 = 3;
    const UINT16: u8 = 5;
    const UINT32: u8 = 6;
    const MAP: u8 = 7;
    const UINT64: u8 = 9;
    const ARRAY: u8 = 11;

    fn encode(out: &mut Vec<u8>, value: &Value) {
        match value {
            Value::Str(s) => string(out, s),
            Value::Double(d) => {
                control(out, DOUBLE, 8);
                out.extend_from_slice(&d.to_be_bytes());
            }
            Value::U16(n) => uint(out, UINT16, &n.to_be_bytes()),
            Value::U32(n) => uint(out, UINT32, &n.to_be_bytes()),
            Value::U64(n) => uint(out, UINT64, &n.to_be_bytes()),
            Value::Map(pairs) => {
                control(out, MAP, pairs.len());
                for (key, value) in pairs {
                    string(out, key);
                    encode(out, value);
                }
            }
            Value::Array(items) => {
                control(out, ARRAY, items.len());
                for item in items {
                    encode(out, item);
                }
            }
        }
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        control(out, UTF8_STRING, s.len());
        out.extend_from_slice(s.as_bytes());
    }

    /// Unsigned integers are stored big-endian without leading zero bytes.
    fn uint(out: &mut Vec<u8>, type_num: u8, be: &[u8]) {
        let skip = be.iter().take_while(|&&b| b == 0).count();
        control(out, type_num, be.len() - skip);
        out.extend_from_slice(&be[skip..]);
    }

    /// The control byte: type in the top 3 bits (0 plus a following byte for extended types), size
    /// in the low 5 bits, with sizes of 29 and up continued in 1 to 3 more bytes.
    fn control(out: &mut Vec<u8>, type_num: u8, size: usize) {
        let (type_bits, extended) = if type_num <= 7 { (type_num, None) } else { (0, Some(type_num - 7)) };
        let (size_bits, rest): (u8, &[u8]) = match size {
            0..29 => (size as u8, &[]),
            29..285 => (29, &[(size - 29) as u8]),
            285..65_821 => (30, &((size - 285) as u16).to_be_bytes()),
            65_821..16_843_037 => (31, &((size - 65_821) as u32).to_be_bytes()[1..]),
            _ => panic!("data-section value of size {size} is too large"),
        };
        out.push(type_bits << 5 | size_bits);
        out.extend(extended);
        out.extend_from_slice(rest);
    }
}

#[cfg(test)]
mod tests {
    use super::write::{CityEntry, Value, build, city_db, city_record};
    use super::*;

    fn entry(network: &str, prefix_len: u8, lat: f64, lon: f64, continent: &str) -> CityEntry {
        CityEntry { network: network.parse().expect("ip"), prefix_len, lat, lon, continent: continent.into() }
    }

    fn sample() -> Vec<CityEntry> {
        // The /24 comes before the /16 it sits in, so the writer must not depend on input order.
        vec![
            entry("10.1.0.0", 16, 50.11, 8.68, "EU"),
            entry("10.2.5.0", 24, 35.68, 139.69, "AS"),
            entry("10.2.0.0", 16, 1.35, 103.82, "AS"),
            entry("2001:db8::", 32, 38.95, -77.45, "NA"),
        ]
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn at(db: &GeoIpDb, addr: &str) -> Option<(f64, f64, String)> {
        let l = db.locate(ip(addr))?;
        Some((l.point.lat, l.point.lon, l.continent.unwrap_or_default()))
    }

    fn open_written(bytes: &[u8]) -> (tempfile::NamedTempFile, anyhow::Result<GeoIpDb>) {
        let file = tempfile::NamedTempFile::new().expect("tempfile");
        std::fs::write(file.path(), bytes).expect("write");
        let db = GeoIpDb::open(file.path());
        (file, db)
    }

    #[test]
    fn sample_database_lookups() {
        let (_file, db) = open_written(&city_db(&sample()));
        let db = db.expect("open");
        db.reader.verify().expect("the writer's output passes maxminddb's verifier");
        assert!(db.description().starts_with("GeoLite2-City (IPv6 tree, "), "{}", db.description());

        let frankfurt = Some((50.11, 8.68, "EU".to_string()));
        let singapore = Some((1.35, 103.82, "AS".to_string()));
        let tokyo = Some((35.68, 139.69, "AS".to_string()));
        let virginia = Some((38.95, -77.45, "NA".to_string()));
        for (addr, want) in [
            ("10.1.0.0", &frankfurt),
            ("10.1.255.255", &frankfurt),
            ("::ffff:10.1.2.3", &frankfurt),
            ("10.2.0.1", &singapore),
            ("10.2.4.255", &singapore),
            ("10.2.6.0", &singapore),
            ("10.2.5.0", &tokyo),
            ("10.2.5.200", &tokyo),
            ("::ffff:10.2.5.9", &tokyo),
            ("2001:db8::1", &virginia),
            ("2001:db8:ffff:ffff::", &virginia),
            ("10.0.255.255", &None),
            ("10.3.0.0", &None),
            ("192.168.1.1", &None),
            ("::ffff:192.168.1.1", &None),
            ("2001:db9::1", &None),
            ("2001:db7:ffff::", &None),
            ("::1", &None),
            ("fe80::1", &None),
        ] {
            assert_eq!(&at(&db, addr), want, "{addr}");
        }
    }

    #[test]
    fn empty_and_catch_all_databases() {
        let db = GeoIpDb::from_bytes(city_db(&[])).expect("empty db opens");
        db.reader.verify().expect("verify");
        assert_eq!(at(&db, "10.1.2.3"), None);
        assert_eq!(at(&db, "2001:db8::1"), None);

        // 0.0.0.0/0 covers all of IPv4 but none of the rest of IPv6; later equal prefixes win.
        let db = GeoIpDb::from_bytes(city_db(&[
            entry("0.0.0.0", 0, 1.0, 1.0, "AF"),
            entry("10.0.0.0", 8, 2.0, 2.0, "OC"),
            entry("10.9.9.9", 8, 3.0, 3.0, "SA"),
            entry("::", 0, 4.0, 4.0, "AN"),
        ]))
        .expect("open");
        db.reader.verify().expect("verify");
        assert_eq!(at(&db, "1.2.3.4"), Some((1.0, 1.0, "AF".into())));
        assert_eq!(at(&db, "10.200.0.1"), Some((3.0, 3.0, "SA".into())));
        assert_eq!(at(&db, "2001:db8::1"), Some((4.0, 4.0, "AN".into())));
    }

    #[test]
    fn every_record_size_reads_back() {
        let networks: Vec<_> = sample().iter().map(|e| (e.network, e.prefix_len, city_record(e))).collect();
        for record_size in [24, 28, 32] {
            let db = GeoIpDb::from_bytes(build(&networks, 6, Some(record_size))).expect("open");
            db.reader.verify().expect("verify");
            assert_eq!(db.reader.metadata().record_size, record_size);
            assert_eq!(at(&db, "10.2.5.1"), Some((35.68, 139.69, "AS".into())), "{record_size}");
            assert_eq!(at(&db, "2001:db8::1"), Some((38.95, -77.45, "NA".into())), "{record_size}");
            assert_eq!(at(&db, "10.3.0.1"), None, "{record_size}");
        }
    }

    #[test]
    fn data_past_16_mib_uses_28_bit_records() {
        // Two 9 MiB continent codes push the last record's pointer past 24 bits, so its top nibble
        // lands in the shared byte.
        let padding = "x".repeat(9 << 20);
        let db = GeoIpDb::from_bytes(city_db(&[
            entry("10.1.0.0", 16, 1.0, 1.0, &padding),
            entry("10.2.0.0", 16, 2.0, 2.0, &format!("{padding}y")),
            entry("10.3.0.0", 16, 3.0, 3.0, "EU"),
        ]))
        .expect("open");
        assert_eq!(db.reader.metadata().record_size, 28);
        assert_eq!(at(&db, "10.3.0.1"), Some((3.0, 3.0, "EU".into())));
    }

    #[test]
    fn ipv4_only_database() {
        let networks: Vec<_> = sample()
            .iter()
            .filter(|e| e.network.is_ipv4())
            .map(|e| (e.network, e.prefix_len, city_record(e)))
            .collect();
        let db = GeoIpDb::from_bytes(build(&networks, 4, None)).expect("open");
        db.reader.verify().expect("verify");
        assert_eq!(at(&db, "10.2.5.1"), Some((35.68, 139.69, "AS".into())));
        assert_eq!(at(&db, "::ffff:10.2.5.1"), Some((35.68, 139.69, "AS".into())));
        assert_eq!(at(&db, "2001:db8::1"), None);
        assert_eq!(at(&db, "::1"), None);
    }

    #[test]
    fn unusable_records_are_misses() {
        let network = |s: &str| (ip(s), 16, Value::Map(vec![]));
        let location = |lat, lon| Value::Map(vec![("latitude", Value::Double(lat)), ("longitude", Value::Double(lon))]);
        let mut networks = vec![network("10.1.0.0"), network("10.2.0.0"), network("10.3.0.0"), network("10.4.0.0")];
        networks.push((ip("10.5.0.0"), 16, Value::Map(vec![("location", location(1.0, 2.0))])));
        // No location at all; a continent but no location; latitude out of range; NaN; a string
        // where a double belongs.
        networks[1].2 = Value::Map(vec![("continent", Value::Map(vec![("code", Value::Str("EU".into()))]))]);
        networks[2].2 = Value::Map(vec![("location", location(91.0, 0.0))]);
        networks[3].2 = Value::Map(vec![("location", location(f64::NAN, 0.0))]);
        networks.push((
            ip("10.6.0.0"),
            16,
            Value::Map(vec![("location", Value::Map(vec![("latitude", Value::Str("1".into()))]))]),
        ));
        let db = GeoIpDb::from_bytes(build(&networks, 6, None)).expect("open");
        for addr in ["10.1.0.1", "10.2.0.1", "10.3.0.1", "10.4.0.1", "10.6.0.1"] {
            assert_eq!(db.locate(ip(addr)), None, "{addr}");
        }
        // A location without a continent is still a location.
        let got = db.locate(ip("10.5.0.1")).expect("located");
        assert_eq!((got.point, got.continent), (GeoPoint { lat: 1.0, lon: 2.0 }, None));
    }

    #[test]
    fn open_rejects_missing_non_db_and_truncated_files() {
        let err = GeoIpDb::open(Path::new("/nonexistent/GeoLite2-City.mmdb")).expect_err("missing");
        assert!(format!("{err:#}").contains("/nonexistent/GeoLite2-City.mmdb"), "{err:#}");

        let (file, db) = open_written(b"not a database\n");
        let err = db.expect_err("not a db");
        assert!(format!("{err:#}").contains(&file.path().display().to_string()), "{err:#}");

        let bytes = city_db(&sample());
        let (_file, db) = open_written(&bytes[..bytes.len() - 10]);
        db.expect_err("truncated");
        // Every truncation cuts into the metadata at the end of the file.
        for len in 0..bytes.len() {
            assert!(GeoIpDb::from_bytes(bytes[..len].to_vec()).is_err(), "truncated to {len}");
        }
    }

    #[test]
    fn corrupted_databases_never_panic() {
        let bytes = city_db(&sample());
        let probes: Vec<IpAddr> =
            ["10.1.2.3", "10.2.5.9", "10.2.9.9", "::ffff:10.2.5.9", "2001:db8::1", "::1", "8.8.8.8"]
                .iter()
                .map(|s| ip(s))
                .collect();
        // xorshift64: deterministic, so a failure reproduces.
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut opened = 0;
        for _ in 0..4000 {
            let mut copy = bytes.clone();
            for _ in 0..=next() % 4 {
                let at = (next() % copy.len() as u64) as usize;
                copy[at] ^= (next() % 255 + 1) as u8;
            }
            if let Ok(db) = GeoIpDb::from_bytes(copy) {
                opened += 1;
                let _ = db.description();
                for &probe in &probes {
                    let _ = db.locate(probe);
                }
            }
        }
        // Most flips land in the tree or data section, which open does not check.
        assert!(opened > 1000, "only {opened} corrupted copies opened");
    }
}
