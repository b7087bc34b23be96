"""Pixel services: decoding and encoding frames in every transfer syntax (pydicom's pixel plugins and the
codec wheels), transcoding whole instances frame by frame, and rendering frames to JPEG/PNG/GIF."""
