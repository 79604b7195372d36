"""The three ways to a gradient, each independent of the others:
autograd (torch, in the requested dtype), symbolic (SymPy, exact formulas evaluated in
float64), finite differences (torch forward passes in float64 or complex128)."""
