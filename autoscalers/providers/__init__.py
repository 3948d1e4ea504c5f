"""The clouds behind one interface (base.Provider). Only this package imports a cloud SDK."""
