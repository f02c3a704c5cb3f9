"""Replica writers: small files in each dataset's exact published layout, written with the
real writer libraries, sharing no code with the recipes that read them."""

from emdata.testing.replicas.axonem import write_axonem_replica
from emdata.testing.replicas.cremi import write_cremi_replica
from emdata.testing.replicas.densecell import write_densecell_replica
from emdata.testing.replicas.fib25 import write_fib25_replica
from emdata.testing.replicas.human_liver_em import write_human_liver_em_replica
from emdata.testing.replicas.isbi2012 import write_isbi2012_replica
from emdata.testing.replicas.kasthuri_pp import write_kasthuri_pp_replica
from emdata.testing.replicas.lucchi_pp import write_lucchi_pp_replica
from emdata.testing.replicas.mitoem import write_mitoem_replica
from emdata.testing.replicas.mitoem2 import write_mitoem2_replica
from emdata.testing.replicas.nucmm import write_nucmm_replica
from emdata.testing.replicas.parlakgul_liver import write_parlakgul_liver_replica
from emdata.testing.replicas.platelet_em import write_platelet_em_replica
from emdata.testing.replicas.precomputed_sets import (
    write_h01_replica,
    write_hemibrain_replica,
    write_j0126_replica,
    write_kasthuri_replica,
    write_microns_layer23_replica,
    write_microns_minnie65_replica,
)
from emdata.testing.replicas.snemi3d import write_snemi3d_replica
from emdata.testing.replicas.tem_neutrostruct import write_tem_neutrostruct_replica

__all__ = [
    "write_axonem_replica",
    "write_cremi_replica",
    "write_densecell_replica",
    "write_fib25_replica",
    "write_h01_replica",
    "write_hemibrain_replica",
    "write_human_liver_em_replica",
    "write_isbi2012_replica",
    "write_j0126_replica",
    "write_kasthuri_pp_replica",
    "write_kasthuri_replica",
    "write_lucchi_pp_replica",
    "write_microns_layer23_replica",
    "write_microns_minnie65_replica",
    "write_mitoem2_replica",
    "write_mitoem_replica",
    "write_nucmm_replica",
    "write_parlakgul_liver_replica",
    "write_platelet_em_replica",
    "write_snemi3d_replica",
    "write_tem_neutrostruct_replica",
]
