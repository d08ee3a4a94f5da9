"""The bundled sample app and the `bluegreen demo` command."""
