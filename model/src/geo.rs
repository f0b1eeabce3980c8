//! Geography: points, distances and regions.

use serde::{Deserialize, Serialize};

/// A point on the earth, in degrees.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GeoPoint {
    /// Latitude, -90..=90.
    pub lat: f64,
    /// Longitude, -180..=180.
    pub lon: f64,
}

impl GeoPoint {
    /// A point, if both coordinates are in range.
    pub fn new(lat: f64, lon: f64) -> Option<Self> {
        let ok = lat.is_finite() && lon.is_finite() && (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon);
        ok.then_some(Self { lat, lon })
    }

    /// Parses `lat,lon`, as sent in the `x-fluxplane-client-geo` header.
    pub fn parse(text: &str) -> Option<Self> {
        let (lat, lon) = text.split_once(',')?;
        Self::new(lat.trim().parse().ok()?, lon.trim().parse().ok()?)
    }

    /// Great-circle distance in kilometres (haversine).
    pub fn distance_km(&self, other: &GeoPoint) -> f64 {
        const EARTH_RADIUS_KM: f64 = 6371.0;
        let (lat1, lat2) = (self.lat.to_radians(), other.lat.to_radians());
        let dlat = lat2 - lat1;
        let dlon = (other.lon - self.lon).to_radians();
        let a = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
        2.0 * EARTH_RADIUS_KM * a.sqrt().asin()
    }
}

impl std::fmt::Display for GeoPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.4},{:.4}", self.lat, self.lon)
    }
}

/// A named geographic area served by one shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Region {
    /// Short name, such as `eu`.
    pub name: String,
    /// The Flux continent code the region serves (`EU`, `NA`, `AS`, ...).
    pub continent: String,
    /// The region's centre, used when a node or client has no better location.
    pub center: GeoPoint,
}

/// The regions of the built-in devnet: Europe, North America and Asia.
pub fn default_regions() -> Vec<Region> {
    vec![
        Region { name: "eu".into(), continent: "EU".into(), center: GeoPoint { lat: 50.11, lon: 8.68 } },
        Region { name: "na".into(), continent: "NA".into(), center: GeoPoint { lat: 39.04, lon: -77.49 } },
        Region { name: "as".into(), continent: "AS".into(), center: GeoPoint { lat: 1.35, lon: 103.82 } },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frankfurt_to_virginia_is_about_6500_km() {
        let fra = GeoPoint::new(50.11, 8.68).expect("valid");
        let iad = GeoPoint::new(39.04, -77.49).expect("valid");
        let d = fra.distance_km(&iad);
        assert!((6400.0..6700.0).contains(&d), "{d}");
        assert_eq!(fra.distance_km(&fra), 0.0);
    }

    #[test]
    fn parses_header_form() {
        assert_eq!(GeoPoint::parse(" 1.3, 103.8"), GeoPoint::new(1.3, 103.8));
        assert_eq!(GeoPoint::parse("91,0"), None);
        assert_eq!(GeoPoint::parse("abc"), None);
        assert_eq!(GeoPoint::parse("NaN,0"), None);
    }
}
