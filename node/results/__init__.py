"""PipelineResult → standard DICOM (SEG, TID 1500 SR, Encapsulated PDF, overlay), validated."""
