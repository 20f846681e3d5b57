//! The feature file's columns, and the conversion between rows and Arrow record batches.

use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, FixedSizeListBuilder, Float16Builder, Float32Builder, ListBuilder,
    StringBuilder, UInt64Builder,
};
use arrow_array::{
    Array, ArrayRef, FixedSizeListArray, Float16Array, Float32Array, ListArray, RecordBatch,
    StringArray, UInt64Array,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::store::{Features, NewItem};

/// The schema version, in the `trio.format` metadata key. Bumped when a column changes meaning.
pub const FORMAT_VERSION: u32 = 1;
/// Metadata key of the schema version.
pub const FORMAT_KEY: &str = "trio.format";
/// Metadata key of the towers' fingerprint (JSON).
pub const TOWERS_KEY: &str = "trio.towers";

/// How vectors are stored. `F16` halves the file (1280 + 2 x 384 values a row) at a relative
/// error of about 1e-3, below what changes a nearest neighbour in practice; vectors are `f32`
/// again once loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    F16,
}

impl std::str::FromStr for Precision {
    type Err = crate::Error;

    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "f32" => Ok(Precision::F32),
            "f16" => Ok(Precision::F16),
            other => Err(crate::Error::InvalidArgument(format!(
                "unknown precision `{other}`: expected f32 or f16"
            ))),
        }
    }
}

/// One item of a feature file: what the store keeps of it, and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeRow {
    /// The manifest row (`trio embed`); `None` for rows exported from a catalogue.
    pub source_row: Option<u64>,
    pub item: NewItem,
    pub features: Features,
}

/// The vector columns: name, and the text field it holds (`None`: the image).
pub(crate) const VECTOR_COLUMNS: [(&str, Option<&str>); 3] = [
    ("image_vector", None),
    ("title_vector", Some("title")),
    ("description_vector", Some("description")),
];

fn element_type(precision: Precision) -> DataType {
    match precision {
        Precision::F32 => DataType::Float32,
        Precision::F16 => DataType::Float16,
    }
}

fn vector_field(name: &str, dim: usize, precision: Precision) -> Field {
    let item = Field::new("item", element_type(precision), false);
    Field::new(
        name,
        DataType::FixedSizeList(Arc::new(item), dim as i32),
        true,
    )
}

/// The Arrow schema of a file with these vector sizes.
pub fn arrow_schema(image_dim: usize, text_dim: usize, precision: Precision) -> SchemaRef {
    let text = || Field::new("item", DataType::Utf8, true);
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("source_row", DataType::UInt64, true),
        Field::new("content_hash", DataType::Utf8, false),
        Field::new("title", DataType::Utf8, true),
        Field::new("description", DataType::Utf8, true),
        Field::new("tags", DataType::List(Arc::new(text())), false),
        Field::new("label", DataType::Utf8, true),
        Field::new("image_path", DataType::Utf8, true),
        Field::new("metadata", DataType::Utf8, false),
        Field::new("image_phash", DataType::UInt64, true),
        Field::new("has_image", DataType::Boolean, false),
        Field::new("has_title", DataType::Boolean, false),
        Field::new("has_description", DataType::Boolean, false),
        vector_field(VECTOR_COLUMNS[0].0, image_dim, precision),
        vector_field(VECTOR_COLUMNS[1].0, text_dim, precision),
        vector_field(VECTOR_COLUMNS[2].0, text_dim, precision),
    ]))
}

/// A vector column being built, in the file's precision.
enum VectorBuilder {
    F32(FixedSizeListBuilder<Float32Builder>),
    F16(FixedSizeListBuilder<Float16Builder>),
}

impl VectorBuilder {
    fn new(dim: usize, rows: usize, precision: Precision) -> Self {
        let item = Field::new("item", element_type(precision), false);
        match precision {
            Precision::F32 => VectorBuilder::F32(
                FixedSizeListBuilder::new(Float32Builder::with_capacity(rows * dim), dim as i32)
                    .with_field(item),
            ),
            Precision::F16 => VectorBuilder::F16(
                FixedSizeListBuilder::new(Float16Builder::with_capacity(rows * dim), dim as i32)
                    .with_field(item),
            ),
        }
    }

    /// Appends a vector, or a null (with zeros in its slots, as Arrow requires) for `None`.
    /// The caller has checked the length.
    fn append(&mut self, v: Option<&[f32]>, dim: usize) {
        match self {
            VectorBuilder::F32(b) => {
                match v {
                    Some(v) => b.values().append_slice(v),
                    None => b.values().append_value_n(0.0, dim),
                }
                b.append(v.is_some());
            }
            VectorBuilder::F16(b) => {
                match v {
                    Some(v) => {
                        for &x in v {
                            b.values().append_value(half::f16::from_f32(x));
                        }
                    }
                    None => b.values().append_value_n(half::f16::ZERO, dim),
                }
                b.append(v.is_some());
            }
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            VectorBuilder::F32(mut b) => Arc::new(b.finish()),
            VectorBuilder::F16(mut b) => Arc::new(b.finish()),
        }
    }
}

/// Rows to one record batch of `schema`. Vector lengths must match the schema: the writer
/// checks them first, so a mismatch here is a bug, reported as an error.
pub(crate) fn to_batch(
    rows: &[ExchangeRow],
    schema: &SchemaRef,
    image_dim: usize,
    text_dim: usize,
    precision: Precision,
) -> std::result::Result<RecordBatch, arrow_schema::ArrowError> {
    let n = rows.len();
    let mut id = StringBuilder::new();
    let mut source_row = UInt64Builder::with_capacity(n);
    let mut content_hash = StringBuilder::new();
    let mut title = StringBuilder::new();
    let mut description = StringBuilder::new();
    let mut tags = ListBuilder::new(StringBuilder::new());
    let mut label = StringBuilder::new();
    let mut image_path = StringBuilder::new();
    let mut metadata = StringBuilder::new();
    let mut phash = UInt64Builder::with_capacity(n);
    let mut has = [
        BooleanBuilder::with_capacity(n),
        BooleanBuilder::with_capacity(n),
        BooleanBuilder::with_capacity(n),
    ];
    let dims = [image_dim, text_dim, text_dim];
    let mut vectors = dims.map(|dim| VectorBuilder::new(dim, n, precision));
    for row in rows {
        let item = &row.item;
        id.append_value(&item.id);
        source_row.append_option(row.source_row);
        content_hash.append_value(&item.content_hash);
        title.append_option(Some(item.title.as_str()).filter(|t| !t.is_empty()));
        description.append_option(item.description.as_deref());
        for tag in &item.tags {
            tags.values().append_value(tag);
        }
        tags.append(true);
        label.append_option(item.label.as_deref());
        image_path.append_option(item.image_path.as_deref());
        metadata.append_value(serde_json::Value::Object(item.metadata.clone()).to_string());
        phash.append_option(item.image_phash);
        for (i, (_, field)) in VECTOR_COLUMNS.iter().enumerate() {
            let v = vector_of(&row.features, *field);
            has[i].append_value(v.is_some());
            vectors[i].append(v, dims[i]);
        }
    }
    let [has_image, has_title, has_description] = has;
    let [image_v, title_v, description_v] = vectors;
    let finish_bool = |mut b: BooleanBuilder| -> ArrayRef { Arc::new(b.finish()) };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(source_row.finish()),
        Arc::new(content_hash.finish()),
        Arc::new(title.finish()),
        Arc::new(description.finish()),
        Arc::new(tags.finish()),
        Arc::new(label.finish()),
        Arc::new(image_path.finish()),
        Arc::new(metadata.finish()),
        Arc::new(phash.finish()),
        finish_bool(has_image),
        finish_bool(has_title),
        finish_bool(has_description),
        image_v.finish(),
        title_v.finish(),
        description_v.finish(),
    ];
    // The tags list's item field is the builder's default: take the schema's field types
    // from the arrays so both always agree.
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .zip(&columns)
        .map(|(f, c)| f.as_ref().clone().with_data_type(c.data_type().clone()))
        .collect();
    let schema = Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
    RecordBatch::try_new(schema, columns)
}

pub(crate) fn vector_of<'a>(features: &'a Features, field: Option<&str>) -> Option<&'a [f32]> {
    match field {
        None => features.image.as_deref(),
        Some(f) => features.text.get(f).map(Vec::as_slice),
    }
}

/// Typed access to one record batch's columns, checked once per batch.
pub(crate) struct BatchColumns<'a> {
    id: &'a StringArray,
    source_row: Option<&'a UInt64Array>,
    content_hash: &'a StringArray,
    title: &'a StringArray,
    description: &'a StringArray,
    tags: &'a ListArray,
    label: &'a StringArray,
    image_path: &'a StringArray,
    metadata: &'a StringArray,
    image_phash: &'a UInt64Array,
    vectors: [VectorColumn<'a>; 3],
}

/// A vector column of either precision.
enum VectorColumn<'a> {
    F32(&'a FixedSizeListArray, &'a Float32Array),
    F16(&'a FixedSizeListArray, &'a Float16Array),
}

impl VectorColumn<'_> {
    fn dim(&self) -> usize {
        match self {
            VectorColumn::F32(l, _) | VectorColumn::F16(l, _) => l.value_length() as usize,
        }
    }

    fn get(&self, i: usize) -> Option<Vec<f32>> {
        let (list, dim) = match self {
            VectorColumn::F32(l, _) | VectorColumn::F16(l, _) => (*l, self.dim()),
        };
        if list.is_null(i) {
            return None;
        }
        let start = list.value_offset_at(i);
        Some(match self {
            VectorColumn::F32(_, v) => v.values()[start..start + dim].to_vec(),
            VectorColumn::F16(_, v) => v.values()[start..start + dim]
                .iter()
                .map(|x| x.to_f32())
                .collect(),
        })
    }
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T, String> {
    batch
        .column_by_name(name)
        .ok_or_else(|| format!("column `{name}` is missing"))?
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| format!("column `{name}` has the wrong type"))
}

impl<'a> BatchColumns<'a> {
    pub(crate) fn new(batch: &'a RecordBatch) -> Result<Self, String> {
        let vector = |name: &str| -> Result<VectorColumn<'a>, String> {
            let list: &FixedSizeListArray = column(batch, name)?;
            let values = list.values().as_any();
            if let Some(v) = values.downcast_ref::<Float32Array>() {
                Ok(VectorColumn::F32(list, v))
            } else if let Some(v) = values.downcast_ref::<Float16Array>() {
                Ok(VectorColumn::F16(list, v))
            } else {
                Err(format!("column `{name}` holds neither float32 nor float16"))
            }
        };
        Ok(BatchColumns {
            id: column(batch, "id")?,
            source_row: column(batch, "source_row").ok(),
            content_hash: column(batch, "content_hash")?,
            title: column(batch, "title")?,
            description: column(batch, "description")?,
            tags: column(batch, "tags")?,
            label: column(batch, "label")?,
            image_path: column(batch, "image_path")?,
            metadata: column(batch, "metadata")?,
            image_phash: column(batch, "image_phash")?,
            vectors: [
                vector(VECTOR_COLUMNS[0].0)?,
                vector(VECTOR_COLUMNS[1].0)?,
                vector(VECTOR_COLUMNS[2].0)?,
            ],
        })
    }

    /// The sizes of the image and text vectors.
    pub(crate) fn dims(&self) -> (usize, usize) {
        (self.vectors[0].dim(), self.vectors[1].dim())
    }

    /// Row `i` of the batch. The error says what is wrong with that row.
    pub(crate) fn row(&self, i: usize) -> Result<ExchangeRow, (Option<String>, String)> {
        let text = |a: &StringArray| (!a.is_null(i)).then(|| a.value(i).to_string());
        let id = text(self.id);
        let fail = |reason: String| (id.clone(), reason);
        let Some(item_id) = id.clone().filter(|s| !s.is_empty()) else {
            return Err(fail("the id is null or empty".into()));
        };
        let metadata = match text(self.metadata) {
            None => serde_json::Map::new(),
            Some(m) => match serde_json::from_str(&m) {
                Ok(serde_json::Value::Object(map)) => map,
                _ => return Err(fail("`metadata` is not a JSON object".into())),
            },
        };
        let tags = if self.tags.is_null(i) {
            Vec::new()
        } else {
            let values = self.tags.value(i);
            let values = values
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| fail("`tags` is not a list of strings".into()))?;
            values.iter().flatten().map(str::to_string).collect()
        };
        let mut features = Features::default();
        for (column, (name, field)) in self.vectors.iter().zip(VECTOR_COLUMNS) {
            let Some(v) = column.get(i) else { continue };
            if v.iter().any(|x| !x.is_finite()) {
                return Err(fail(format!("`{name}` holds a NaN or infinite value")));
            }
            match field {
                None => features.image = Some(v),
                Some(f) => {
                    features.text.insert(f.to_string(), v);
                }
            }
        }
        let item = NewItem {
            id: item_id,
            title: text(self.title).unwrap_or_default(),
            description: text(self.description),
            tags,
            label: text(self.label),
            image_path: text(self.image_path),
            content_hash: text(self.content_hash).unwrap_or_default(),
            image_phash: (!self.image_phash.is_null(i)).then(|| self.image_phash.value(i)),
            metadata,
            image_thumbnail: None,
        };
        let source_row = self
            .source_row
            .and_then(|c| (!c.is_null(i)).then(|| c.value(i)));
        Ok(ExchangeRow {
            source_row,
            item,
            features,
        })
    }
}
