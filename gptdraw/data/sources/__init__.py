"""Readers for image–caption data: one `Source` interface over every supported layout.

A source is an ordered, re-readable list of `SourceItem`s with a known length, read in
ranges (`read(start, stop)`) so that `gptdraw prepare` can split the work into shards
deterministically and resume or distribute them without reading what it skips.

    open_source(spec, **options)          spec is one of:
      "shapes"                            the built-in dataset (count, image_size, seed)
      DIR with *.tar                      webdataset tars, e.g. img2dataset --output_format webdataset
      DIR with *.parquet + sub-folders    img2dataset --output_format files
      DIR or FILE with *.parquet          parquet with an image-bytes column, e.g. img2dataset --output_format parquet
      DIR saved by datasets' save_to_disk a Hugging Face dataset (also "hf:ID" for a hub id)
      DIR of images                       a folder tree of images, each with a same-named .txt caption
      FILE.csv / .tsv / .jsonl            a manifest of image paths (relative to it) and captions

Web-scale caption datasets such as Conceptual Captions come as URL lists. The supported
route is to download them with img2dataset first (it keeps each caption with its image):

    img2dataset --url_list cc3m.tsv --input_format tsv --url_col url --caption_col caption \
        --output_format webdataset --output_folder cc3m --image_size 256 --resize_mode center_crop
    gptdraw prepare cc3m --out data/cc3m --vq VQDIR

For img2dataset output the items that it failed to download or decode are kept, with its
status as the skip reason ("failed_to_download", "failed_to_resize"), so the dataset
manifest accounts for every input line. A manifest whose image column holds URLs reads
them through `url_map` (a JSON object or a two-column TSV url → local file); unmapped URLs
are skipped as "not_downloaded".
"""

from gptdraw.data.sources.base import Source, SourceItem
from gptdraw.data.sources.builtin import ShapesSource
from gptdraw.data.sources.folder import FolderSource
from gptdraw.data.sources.huggingface import HFSource
from gptdraw.data.sources.img2dataset import MultiFileSource
from gptdraw.data.sources.manifest import ManifestSource
from gptdraw.data.sources.registry import FORMATS, detect_format, open_source

__all__ = ["FORMATS", "FolderSource", "HFSource", "ManifestSource", "MultiFileSource", "ShapesSource", "Source",
           "SourceItem", "detect_format", "open_source"]
