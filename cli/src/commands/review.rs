//! `trio label` and `trio duplicates --dismiss`: the review page's decisions from the command
//! line. They are stored in the catalogue, so the next `trio noise` and `trio duplicates` (and
//! the server's reports) leave out what was decided.

use anyhow::bail;
use clap::Args;
use serde_json::Value;
use trio_engine::catalog::{group_id, label_in, Catalog, DuplicatesOutcome};

use crate::output;
use crate::settings::{DbArgs, GlobalArgs};

#[derive(Debug, Args)]
pub struct LabelArgs {
    /// The item's id.
    id: String,
    /// Its new label.
    #[arg(required_unless_present = "keep", conflicts_with = "keep")]
    label: Option<String>,
    /// Confirm the item's current label instead: `trio noise` stops listing the item while it
    /// keeps that label.
    #[arg(long)]
    keep: bool,
    /// Change nothing (and fail) unless the item's label is this one now.
    #[arg(long, value_name = "LABEL")]
    if_label: Option<String>,
    /// The field the label is in: `label`, or the metadata field `trio train --label-field`
    /// and `trio noise --label-field` read.
    #[arg(long, default_value = "label")]
    label_field: String,
    #[command(flatten)]
    db: DbArgs,
}

pub fn label(args: LabelArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let catalog = Catalog::open_existing(&args.db.db)?;
    let field = &args.label_field;
    let if_label = args.if_label.as_deref();
    let item = match &args.label {
        Some(label) => catalog.set_label(&args.id, field, label, if_label)?,
        None => catalog.keep_label(&args.id, field, if_label)?,
    };
    let label = label_in(&item, field);
    let out =
        serde_json::json!({ "id": item.id, "field": field, "label": label, "kept": args.keep });
    output::emit(global.json, &out, |_| {
        let label = label.as_deref().unwrap_or("");
        if args.keep {
            println!("{}: `{label}` kept", item.id);
        } else {
            println!("{}: {field} is now `{label}`", item.id);
        }
    })
}

/// The report as `trio duplicates --json` prints it: the engine's, each group with its `id`.
pub fn with_group_ids(out: &DuplicatesOutcome) -> anyhow::Result<Value> {
    let mut value = serde_json::to_value(out)?;
    if let Some(groups) = value.get_mut("groups").and_then(Value::as_array_mut) {
        for (group, view) in groups.iter_mut().zip(&out.groups) {
            if let Value::Object(map) = group {
                map.insert("id".into(), group_id(&view.members).into());
            }
        }
    }
    Ok(value)
}

/// Dismisses the group `id` of the report `out` as not duplicates.
pub fn dismiss(
    catalog: &Catalog,
    out: &DuplicatesOutcome,
    id: &str,
    global: &GlobalArgs,
) -> anyhow::Result<()> {
    let Some(group) = out.groups.iter().find(|g| group_id(&g.members) == id) else {
        bail!(
            "no duplicate group `{id}` in this report: run `trio duplicates` with the same \
             options for the current group ids"
        );
    };
    catalog.dismiss_group(&group.members)?;
    let shown = serde_json::json!({ "dismissed": id, "members": group.members });
    output::emit(global.json, &shown, |_| {
        println!(
            "{id}: {} are not duplicates; later reports leave them apart",
            group.members.join(", ")
        )
    })
}
