"""?ordering= for API lists: unknown fields are an error, and ties are broken by id so pages never overlap."""

from rest_framework import filters
from rest_framework.exceptions import ValidationError


class OrderingFilter(filters.OrderingFilter):
    def get_ordering(self, request, queryset, view):
        params = request.query_params.get(self.ordering_param)
        if not params:
            return self.get_default_ordering(view)
        fields = [param.strip() for param in params.split(",") if param.strip()]
        valid = self.remove_invalid_fields(queryset, fields, view, request)
        if len(valid) != len(fields) or not fields:
            allowed = sorted(name for name, _ in self.get_valid_fields(queryset, view, {"request": request}))
            raise ValidationError({self.ordering_param: [f"Order by one or more of: {', '.join(allowed)}."]})
        if not {"pk", "-pk", "id", "-id"} & set(valid):
            valid.append("-pk" if valid[-1].startswith("-") else "pk")
        return valid
