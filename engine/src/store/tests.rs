//! Checks that need to write raw redb files: foreign databases and other schema versions.

use super::*;

#[test]
fn a_redb_file_without_trio_tables_is_not_a_store() -> Result<()> {
    let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", e))?;
    let path = dir.path().join("other.redb");
    {
        let db = Database::create(&path).at("meta", || "test setup".into())?;
        let txn = db.begin_write().at("meta", || "test setup".into())?;
        {
            let other: TableDefinition<u64, u64> = TableDefinition::new("something_else");
            txn.open_table(other)
                .at("meta", || "test setup".into())?
                .insert(1, 2)
                .at("meta", || "test setup".into())?;
        }
        txn.commit().at("meta", || "test setup".into())?;
    }
    match Store::open(&path) {
        Err(Error::NotAStore { reason, .. }) => assert!(reason.contains("without Trio's tables")),
        other => panic!("expected NotAStore, got {other:?}"),
    }
    Ok(())
}

#[test]
fn a_meta_table_of_other_types_is_not_a_store() -> Result<()> {
    let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", e))?;
    let path = dir.path().join("other.redb");
    {
        let db = Database::create(&path).at("meta", || "test setup".into())?;
        let txn = db.begin_write().at("meta", || "test setup".into())?;
        {
            let foreign: TableDefinition<u64, &str> = TableDefinition::new("meta");
            txn.open_table(foreign)
                .at("meta", || "test setup".into())?
                .insert(1, "x")
                .at("meta", || "test setup".into())?;
        }
        txn.commit().at("meta", || "test setup".into())?;
    }
    assert!(matches!(Store::open(&path), Err(Error::NotAStore { .. })));
    Ok(())
}

#[test]
fn another_schema_version_is_refused_unchanged() -> Result<()> {
    let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", e))?;
    let path = dir.path().join("s.redb");
    {
        let store = Store::create(&path)?;
        let txn = store.write_txn()?;
        txn.open_table(META)
            .at("meta", || "test setup".into())?
            .insert(meta_key::SCHEMA, SCHEMA_VERSION + 1)
            .at("meta", || "test setup".into())?;
        txn.commit().at("meta", || "test setup".into())?;
    }
    let before = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    match Store::open(&path) {
        Err(Error::StoreSchemaMismatch {
            found, expected, ..
        }) => {
            assert_eq!(found, SCHEMA_VERSION + 1);
            assert_eq!(expected, SCHEMA_VERSION);
        }
        other => panic!("expected a schema mismatch, got {other:?}"),
    }
    assert!(matches!(
        Store::open_or_create(&path),
        Err(Error::StoreSchemaMismatch { .. })
    ));
    let after = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    assert!(before == after, "refusing the file must not change it");
    Ok(())
}
