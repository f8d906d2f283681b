"""Writes the parquet_schema_fuzz seed corpus (fuzz/corpus/parquet_schema_fuzz/): small files in
the layouts Hugging Face datasets writes and the variants read_parquet_images accepts or refuses.
Run once; the files are committed.   python3 fuzz/make_parquet_corpus.py"""
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

out = Path(__file__).parent / "corpus" / "parquet_schema_fuzz"
out.mkdir(parents=True, exist_ok=True)
png = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108020000009077"
                    "53de0000000c4944415408d763f8cfc000000301010018dd8db00000000049454e44ae426082")
image_struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def write(name, table, **kw):
    pq.write_table(table, out / name, **kw)


write("hf_image_feature.parquet", pa.table({
    "image": pa.array([{"bytes": png, "path": "a.png"}, {"bytes": None, "path": "b.png"}, None], image_struct),
    "text": ["a red circle", None, "x"]}), compression="snappy")
write("binary_and_list.parquet", pa.table({
    "image": pa.array([png, png], pa.binary()),
    "text": pa.array([["first", "second"], []], pa.list_(pa.string()))}), compression="none")
write("large_types.parquet", pa.table({
    "image": pa.array([png], pa.large_binary()), "text": pa.array(["x"], pa.large_string())}),
    compression="zstd")
write("row_groups.parquet", pa.table({
    "image": pa.array([png] * 5, pa.binary()), "text": [f"row {i}" for i in range(5)]}), row_group_size=2)
write("wrong_types.parquet", pa.table({"image": pa.array([1, 2]), "text": pa.array([1.0, 2.0])}))
write("missing_column.parquet", pa.table({"img": pa.array([png], pa.binary()), "caption": ["x"]}))
write("dictionary_text.parquet", pa.table({
    "image": pa.array([png] * 3, pa.binary()), "text": ["same", "same", "other"]}), use_dictionary=True)
