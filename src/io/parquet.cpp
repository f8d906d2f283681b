#include "sdtune/io/parquet.h"

#include <arrow/api.h>
#include <arrow/io/file.h>
#include <parquet/arrow/reader.h>
#include <parquet/arrow/schema.h>
#include <parquet/file_reader.h>
#include <parquet/metadata.h>

#include "sdtune/error.h"

namespace sdtune::io {
namespace {
namespace fs = std::filesystem;

void check(const arrow::Status& status, const fs::path& file, const std::string& what) {
  if (!status.ok()) throw Error(what + ": " + status.ToString(), file.string());
}

template <typename T>
T value_of(arrow::Result<T> result, const fs::path& file, const std::string& what) {
  check(result.status(), file, what);
  return result.MoveValueUnsafe();
}

bool is_bytes_type(const arrow::DataType& type) {
  switch (type.id()) {
    case arrow::Type::BINARY:
    case arrow::Type::STRING:
    case arrow::Type::LARGE_BINARY:
    case arrow::Type::LARGE_STRING:
    case arrow::Type::BINARY_VIEW:
    case arrow::Type::STRING_VIEW:
      return true;
    default:
      return false;
  }
}

bool is_list_type(const arrow::DataType& type) {
  return type.id() == arrow::Type::LIST || type.id() == arrow::Type::LARGE_LIST ||
         type.id() == arrow::Type::FIXED_SIZE_LIST;
}

// The i-th value of a non-null cell of a binary or string array (is_bytes_type).
std::string_view view_at(const arrow::Array& array, int64_t i) {
  switch (array.type_id()) {
    case arrow::Type::BINARY:
    case arrow::Type::STRING:
      return static_cast<const arrow::BinaryArray&>(array).GetView(i);
    case arrow::Type::LARGE_BINARY:
    case arrow::Type::LARGE_STRING:
      return static_cast<const arrow::LargeBinaryArray&>(array).GetView(i);
    default:
      return static_cast<const arrow::BinaryViewArray&>(array).GetView(i);
  }
}

// The first string of list cell i; "" for a null or empty list or a null first element.
std::string first_of_list(const arrow::Array& array, int64_t i) {
  int64_t offset = 0, length = 0;
  std::shared_ptr<arrow::Array> values;
  if (array.type_id() == arrow::Type::LIST) {
    const auto& list = static_cast<const arrow::ListArray&>(array);
    offset = list.value_offset(i), length = list.value_length(i), values = list.values();
  } else if (array.type_id() == arrow::Type::LARGE_LIST) {
    const auto& list = static_cast<const arrow::LargeListArray&>(array);
    offset = list.value_offset(i), length = list.value_length(i), values = list.values();
  } else {
    const auto& list = static_cast<const arrow::FixedSizeListArray&>(array);
    offset = list.value_offset(i), length = list.value_length(i), values = list.values();
  }
  if (length == 0 || values->IsNull(offset)) return "";
  return std::string(view_at(*values, offset));
}

std::string caption_at(const arrow::Array& array, int64_t i) {
  if (array.IsNull(i)) return "";
  if (is_list_type(*array.type())) return first_of_list(array, i);
  return std::string(view_at(array, i));
}

std::string column_list(const arrow::Schema& schema) {
  std::string out;
  for (const auto& field : schema.fields())
    out += (out.empty() ? "" : ", ") + field->name() + " (" + field->type()->ToString() + ")";
  return out;
}

// The image column's type, checked: binary-like, or a struct with a binary-like "bytes" field
// (and, if present, a string "path").
void check_image_type(const arrow::Field& field, const fs::path& file) {
  const arrow::DataType& type = *field.type();
  if (is_bytes_type(type)) return;
  if (type.id() == arrow::Type::STRUCT) {
    const auto& st = static_cast<const arrow::StructType&>(type);
    const auto bytes = st.GetFieldByName("bytes"), path = st.GetFieldByName("path");
    if (bytes && is_bytes_type(*bytes->type()) && (!path || is_bytes_type(*path->type()))) return;
  }
  throw Error("image column '" + field.name() +
                  "' should be binary or a struct {bytes: binary, path: string}, not " +
                  type.ToString(),
              file.string());
}

void check_caption_type(const arrow::Field& field, const fs::path& file) {
  const arrow::DataType& type = *field.type();
  if (type.id() == arrow::Type::NA || is_bytes_type(type)) return;
  if (is_list_type(type) && is_bytes_type(*type.field(0)->type())) return;
  throw Error("caption column '" + field.name() +
                  "' should be a string or a list of strings, not " + type.ToString(),
              file.string());
}

// The Parquet leaf column indices under a top-level field (a struct has several).
void leaf_columns(const parquet::arrow::SchemaField& field, std::vector<int>& out) {
  if (field.column_index >= 0) out.push_back(field.column_index);
  for (const auto& child : field.children) leaf_columns(child, out);
}

// Appends one ParquetImageRow per cell of an image-column chunk.
void append_images(const arrow::Array& chunk, int64_t& row, std::vector<ParquetImageRow>& out) {
  std::shared_ptr<arrow::Array> bytes, path;
  if (chunk.type_id() == arrow::Type::STRUCT) {
    // field() slices the child to the struct's own offset and length.
    const auto& st = static_cast<const arrow::StructArray&>(chunk);
    bytes = st.GetFieldByName("bytes");
    path = st.GetFieldByName("path");
  }
  const arrow::Array& data = bytes ? *bytes : chunk;
  for (int64_t i = 0; i < chunk.length(); ++i) {
    ParquetImageRow r;
    r.row = row++;
    if (!chunk.IsNull(i) && !data.IsNull(i))
      r.bytes = std::make_shared<const std::string>(view_at(data, i));
    if (!chunk.IsNull(i) && path && !path->IsNull(i)) r.path = std::string(view_at(*path, i));
    out.push_back(std::move(r));
  }
}

}  // namespace

std::vector<ParquetImageRow> read_parquet_images(const fs::path& file,
                                                 const std::string& image_column,
                                                 const std::string& caption_column,
                                                 int64_t max_row_group_bytes) {
  if (!fs::is_regular_file(file)) throw Error("parquet file not found", file.string());
  std::vector<ParquetImageRow> rows;
  // Arrow allocates what the file declares: this file's own pool (counting only its buffers),
  // capped, turns a declared billion rows into an OutOfMemory status instead of an allocation.
  // Every read is synchronous (no pre-buffering, no threads), so no buffer outlives this call and
  // its pool: an asynchronous read still in flight when a damaged file throws would free into a
  // pool already gone (found by fuzzing).
  arrow::ProxyMemoryPool counted(arrow::default_memory_pool());
  arrow::CappedMemoryPool pool(&counted, max_row_group_bytes);
  try {
    auto input = value_of(arrow::io::ReadableFile::Open(file.string(), &pool), file, "cannot open");
    parquet::ArrowReaderProperties arrow_properties;
    arrow_properties.set_pre_buffer(false);
    arrow_properties.set_use_threads(false);
    parquet::arrow::FileReaderBuilder builder;
    check(builder.Open(input, parquet::ReaderProperties(&pool)), file,
          "not a readable parquet file");
    auto reader = value_of(builder.memory_pool(&pool)->properties(arrow_properties)->Build(), file,
                           "not a readable parquet file");
    std::shared_ptr<arrow::Schema> schema;
    check(reader->GetSchema(&schema), file, "cannot read the parquet schema");

    std::vector<int> leaves;
    for (const std::string* name : {&image_column, &caption_column}) {
      const int index = schema->GetFieldIndex(*name);
      if (index < 0)
        throw Error("no column '" + *name + "'; the columns are: " + column_list(*schema),
                    file.string());
      if (name == &image_column)
        check_image_type(*schema->field(index), file);
      else
        check_caption_type(*schema->field(index), file);
      leaf_columns(reader->manifest().schema_fields[index], leaves);
    }

    // One row group at a time: the table holds only the two columns of that group.
    int64_t row = 0;
    for (int group = 0; group < reader->num_row_groups(); ++group) {
      const std::string where = "cannot read row group " + std::to_string(group);
      auto read = reader->ReadRowGroup(group, leaves);
      if (read.status().IsOutOfMemory())
        throw Error(
            "row group " + std::to_string(group) + " declares " +
                std::to_string(reader->parquet_reader()->metadata()->RowGroup(group)->num_rows()) +
                " rows, more than " + std::to_string(max_row_group_bytes >> 20) +
                " MiB to decode: a damaged file? (" + read.status().message() + ")",
            file.string());
      auto table = value_of(std::move(read), file, where);
      const auto images = table->GetColumnByName(image_column);
      const auto captions = table->GetColumnByName(caption_column);
      const size_t first = rows.size();
      for (const auto& chunk : images->chunks()) append_images(*chunk, row, rows);
      size_t k = first;
      for (const auto& chunk : captions->chunks())
        for (int64_t i = 0; i < chunk->length() && k < rows.size(); ++i)
          rows[k++].caption = caption_at(*chunk, i);
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {  // parquet::ParquetException from a damaged file
    throw Error(std::string("cannot read parquet file: ") + e.what(), file.string());
  }
  return rows;
}

}  // namespace sdtune::io
