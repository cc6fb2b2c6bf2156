"""Networks the metrics run on but do not define: ArcFace IR-SE50, the subject localisers, XVerse's face
pipeline, Qwen2.5-VL."""
