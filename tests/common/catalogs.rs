//! Comparing two catalogues built from the same rows by different routes (one machine, shards
//! on a cluster, an export loaded back): same ids and content, vectors within a tolerance, and
//! the same nearest neighbours.

use std::collections::BTreeMap;
use std::path::Path;

use trio_engine::catalog::{Catalog, Space};
use trio_engine::index::VectorIndex;
use trio_engine::progress::NoProgress;
use trio_engine::store::{Features, Item};

/// Items by id, with their features.
pub fn contents(db: &Path) -> BTreeMap<String, (Item, Features)> {
    let catalog = Catalog::open_existing(db).expect("open catalogue");
    catalog
        .list(0, usize::MAX)
        .expect("list")
        .into_iter()
        .map(|item| {
            let features = catalog
                .store()
                .get_features(item.key)
                .expect("features")
                .unwrap_or_default();
            (item.id.clone(), (item, features))
        })
        .collect()
}

fn close(a: Option<&Vec<f32>>, b: Option<&Vec<f32>>, tol: f32) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
        }
        _ => false,
    }
}

/// Asserts both catalogues hold the same items (every field but the store's key and time) with
/// vectors within `tol`, and that searching each space with a sample of items' own vectors
/// returns the same top 10.
pub fn assert_same_catalogue(a: &Path, b: &Path, tol: f32) {
    let (ca, cb) = (contents(a), contents(b));
    let ids_a: Vec<&String> = ca.keys().collect();
    let ids_b: Vec<&String> = cb.keys().collect();
    assert_eq!(ids_a, ids_b, "same ids");
    for (id, (ia, fa)) in &ca {
        let (ib, fb) = &cb[id];
        let strip = |i: &Item| Item {
            key: 0,
            added_at: 0,
            ..i.clone()
        };
        assert_eq!(strip(ia), strip(ib), "{id}: item fields");
        assert!(
            close(fa.image.as_ref(), fb.image.as_ref(), tol),
            "{id}: image vector"
        );
        let fields_a: Vec<&String> = fa.text.keys().collect();
        let fields_b: Vec<&String> = fb.text.keys().collect();
        assert_eq!(fields_a, fields_b, "{id}: text fields");
        for (field, v) in &fa.text {
            assert!(
                close(Some(v), fb.text.get(field), tol),
                "{id}: {field} vector"
            );
        }
    }
    let (cat_a, cat_b) = (
        Catalog::open_existing(a).expect("open a"),
        Catalog::open_existing(b).expect("open b"),
    );
    for space in [Space::Image, Space::Text] {
        let (ia, ib) = (
            cat_a.index(space, &NoProgress).expect("index a"),
            cat_b.index(space, &NoProgress).expect("index b"),
        );
        let top10 = |cat: &Catalog, index: &dyn VectorIndex, v: &[f32]| -> Vec<String> {
            index
                .search(v, 10, None)
                .expect("search")
                .into_iter()
                .map(|h| {
                    cat.store()
                        .get_by_key(h.key)
                        .expect("item")
                        .expect("hit is stored")
                        .id
                })
                .collect()
        };
        for (id, (item, _)) in ca.iter().step_by(17) {
            let Some(v) = cat_a.vector_of(space, item.key, 0).expect("vector") else {
                continue;
            };
            assert_eq!(
                top10(&cat_a, ia.as_ref(), &v),
                top10(&cat_b, ib.as_ref(), &v),
                "{id}: top 10 in the {} space",
                space.as_str()
            );
        }
    }
}
