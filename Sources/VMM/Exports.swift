@_exported import WireFormats
