"""One module per chapter of the book (see ``hessbatch.paper.registry``)."""
